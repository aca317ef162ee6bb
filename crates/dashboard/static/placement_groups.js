// Placement groups: each group's state and strategy, and where each bundle is reserved.
import { badge, fmtNumber, h, list, nodeCell, nodeLabels, section, shortId, table } from './lib.js';

export const title = 'Placement groups';

export async function render() {
  return [
    await section('placement-groups', 'Placement groups', async () => {
      const [{ rows }, nodes] = await Promise.all([list('placement_groups'), nodeLabels()]);
      return table(
        'pgs-table',
        [
          ['Placement group ID', (pg) => shortId(pg.placement_group_id)],
          ['Name', (pg) => pg.name || ''],
          ['State', (pg) => badge(pg.state)],
          ['Strategy', (pg) => pg.strategy],
          ['Bundles', (pg) => bundles(pg, nodes)],
        ],
        rows,
        (pg) => ({ dataset: { pgId: pg.placement_group_id, state: pg.state, name: pg.name || '' } }),
        'No placement groups.',
      );
    }),
  ];
}

function bundles(pg, nodes) {
  return h(
    'ol',
    { class: 'bundles', start: 0 },
    (pg.bundles || []).map((b, i) =>
      h(
        'li',
        { dataset: { bundleIndex: i, nodeId: b.node_id || '' } },
        Object.entries(b.unit_resources || {})
          .map(([r, n]) => `${r}: ${fmtNumber(n)}`)
          .join(', '),
        ' → ',
        b.node_id ? nodeCell(nodes, b.node_id) : h('em', {}, 'not placed'),
      ),
    ),
  );
}
