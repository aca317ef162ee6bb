// Objects: every object reference the cluster's workers and drivers hold (as `ray memory`):
// its size, how it is referenced, by whom and where it is stored. (No call site: rtd
// does not record where refs are made, as Ray with RAY_record_ref_creation_sites=0.)
import { countBy, fmtBytes, h, list, nodeCell, nodeLabels, section, shortId, table } from './lib.js';

export const title = 'Objects';

export async function render() {
  const objects = list('objects');
  return Promise.all([
    section('object-summary', 'By reference type', async () => summary((await objects).rows)),
    section('objects', 'Object references', async () => objectsTable(...(await Promise.all([objects, nodeLabels()])))),
  ]);
}

function summary(rows) {
  const bytes = (type) => rows.filter((o) => o.reference_type === type).reduce((sum, o) => sum + (o.object_size || 0), 0);
  return table(
    'object-summary-table',
    [
      ['Reference type', ([type]) => type],
      ['References', ([, n]) => String(n)],
      ['Size', ([type]) => fmtBytes(bytes(type))],
    ],
    countBy(rows, (o) => o.reference_type),
    ([type]) => ({ dataset: { referenceType: type } }),
    'No objects.',
  );
}

function objectsTable({ rows, total }, labels) {
  const sorted = [...rows].sort((a, b) => (b.object_size ?? 0) - (a.object_size ?? 0));
  return [
    rows.length < total ? h('p', { class: 'note' }, `Showing ${rows.length} of ${total} references.`) : null,
    table(
      'objects-table',
      [
        ['Object ID', (o) => shortId(o.object_id)],
        ['Size', (o) => fmtBytes(o.object_size)],
        ['Reference type', (o) => o.reference_type],
        ['Task status', (o) => o.task_status || ''],
        ['Held by', (o) => `${o.type || ''} pid ${o.pid ?? '?'} @ ${o.ip || '?'}`],
        ['Owner', (o) => (o.owned ? 'yes' : 'borrower')],
        // The node whose object store holds it; a small value lives inline in its owner.
        ['Stored on', (o) => (o.node_id ? nodeCell(labels, o.node_id) : o.task_status === 'FINISHED' ? 'inline' : '')],
        ['Spilled', (o) => (o.spilled ? 'spilled' : '')],
      ],
      sorted,
      (o) => ({ dataset: { objectId: o.object_id, referenceType: o.reference_type, size: o.object_size ?? '' } }),
      'No objects.',
    ),
  ];
}
