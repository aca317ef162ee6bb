// Cluster overview: how many nodes are alive, what the cluster holds and uses, a row per
// node with usage bars (as Ray's Overview and Cluster pages), and actors and tasks by state.
import {
  ACTOR_STATES,
  TASK_STATES,
  api,
  badge,
  bar,
  clusterSummary,
  fmtBytes,
  fmtNumber,
  h,
  section,
  shortId,
  stateCounts,
  stateTotals,
  table,
} from './lib.js';

export const title = 'Cluster overview';

// Resources shown as bars, in this order; the rest are listed as custom resources.
const MAIN = [
  ['CPU', fmtNumber],
  ['GPU', fmtNumber],
  ['memory', fmtBytes],
  ['object_store_memory', fmtBytes],
];

export async function render() {
  // {num_nodes_alive, num_nodes_dead, resources_total, resources_available (sums over
  // the alive nodes), nodes: [{node_id, node_ip, is_head_node, state, resources_*}]}
  const status = api('/api/cluster_status');
  return Promise.all([
    section('cluster-summary', 'Cluster', async () => summary(await status)),
    section('nodes', 'Nodes', async () => nodesTable((await status).nodes)),
    section('actor-states', 'Actors', async () =>
      stateCounts('actor-state-counts', stateTotals((await clusterSummary('actors')).summary), ACTOR_STATES),
    ),
    section('task-states', 'Tasks', async () =>
      stateCounts('task-state-counts', stateTotals((await clusterSummary('tasks')).summary), TASK_STATES),
    ),
  ]);
}

// In use on a node (or the cluster): its total less what is available.
function used(node, resource) {
  const total = node.resources_total?.[resource] ?? 0;
  const available = node.resources_available?.[resource] ?? total;
  return total - available;
}

function summary(status) {
  const alive = status.num_nodes_alive;
  const dead = status.num_nodes_dead;
  const total = (resource) => status.resources_total[resource] ?? 0;
  return h(
    'div',
    { class: 'summary' },
    h(
      'div',
      { id: 'node-count', class: 'stat', dataset: { alive, dead, total: alive + dead } },
      h('strong', {}, String(alive)),
      ` node${alive === 1 ? '' : 's'} alive`,
      dead ? h('span', { class: 'dead-count' }, `, ${dead} dead`) : null,
    ),
    h(
      'div',
      { id: 'cluster-resources', class: 'resources' },
      MAIN.filter(([resource]) => total(resource) > 0).map(([resource, format]) =>
        h('label', {}, resource, bar(resource, used(status, resource), total(resource), format)),
      ),
    ),
  );
}

function nodesTable(nodes) {
  // Alive nodes first, the head first among them.
  const sorted = [...nodes].sort(
    (a, b) => (a.state !== 'ALIVE') - (b.state !== 'ALIVE') || b.is_head_node - a.is_head_node,
  );
  const resourceCell = (resource, format) => (node) =>
    node.resources_total?.[resource] ? bar(resource, used(node, resource), node.resources_total[resource], format) : '';
  return table(
    'nodes-table',
    [
      ['State', (n) => badge(n.state)],
      ['Node', (n) => h('span', {}, shortId(n.node_id), n.is_head_node ? h('span', { class: 'tag' }, 'head') : null)],
      ['IP', (n) => n.node_ip],
      ...MAIN.map(([resource, format]) => [resource === 'object_store_memory' ? 'Object store' : resource, resourceCell(resource, format)]),
      ['Custom resources', customResources],
    ],
    sorted,
    (n) => ({ dataset: { nodeId: n.node_id, state: n.state, head: n.is_head_node } }),
    'No nodes.',
  );
}

// Resources other than the main ones, without the per-node ones Ray adds (node:<ip>).
function customResources(node) {
  const main = new Set(MAIN.map(([r]) => r));
  return Object.entries(node.resources_total || {})
    .filter(([r]) => !main.has(r) && !r.startsWith('node:'))
    .map(([r, total]) => `${r}: ${fmtNumber(used(node, r))}/${fmtNumber(total)}`)
    .join(', ');
}
