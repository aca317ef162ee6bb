// Logs: a node's log files, and the tail of one of them (or of an actor's or task's log,
// from the Actors page's links), updated live: the tail follows the end of the file
// unless the user has scrolled up.
import { api, h, list, nodeLabel, section, text } from './lib.js';

export const title = 'Logs';

const TAIL_LINES = 1000;

export async function render(params) {
  const actorId = params.get('actor_id');
  const taskId = params.get('task_id');
  if (actorId || taskId) {
    const [kind, id] = actorId ? ['actor', actorId] : ['task', taskId];
    return [await section('log-tail', `Log of ${kind} ${id.slice(0, 8)}…`, () => tail({ [`${kind}_id`]: id }))];
  }
  const nodes = list('nodes');
  // The head's files unless a node is chosen; no node at all when the list fails (its
  // section says why).
  const head = (await nodes.catch(() => ({ rows: [] }))).rows.find((n) => n.is_head_node);
  const nodeId = params.get('node_id') || head?.node_id;
  const filename = params.get('filename');
  return Promise.all([
    section('log-nodes', 'Nodes', async () => nodePicker((await nodes).rows, nodeId)),
    nodeId ? section('log-files', 'Files', () => files(nodeId, filename)) : null,
    nodeId && filename ? section('log-tail', filename, () => tail({ node_id: nodeId, filename })) : null,
  ]);
}

function nodePicker(nodes, current) {
  return h(
    'div',
    { id: 'log-node-list', class: 'chips' },
    nodes.map((n) =>
      h(
        'a',
        {
          href: `#/logs?node_id=${n.node_id}`,
          class: n.node_id === current ? 'chip current' : 'chip',
          dataset: { nodeId: n.node_id },
        },
        nodeLabel(n),
      ),
    ),
  );
}

async function files(nodeId, current) {
  // {category: [file names]}, as Ray's /api/v0/logs answers.
  const categories = (await api(`/api/v0/logs?${new URLSearchParams({ node_id: nodeId })}`)).result;
  return h(
    'div',
    { id: 'log-file-list' },
    Object.entries(categories).map(([category, names]) =>
      h(
        'div',
        { class: 'log-category' },
        h('h3', {}, category),
        h(
          'ul',
          {},
          names.map((name) =>
            h(
              'li',
              {},
              h(
                'a',
                {
                  href: `#/logs?${new URLSearchParams({ node_id: nodeId, filename: name })}`,
                  class: name === current ? 'current' : null,
                  dataset: { filename: name },
                },
                name,
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

async function tail(query) {
  const body = await text(`/api/v0/logs/file?${new URLSearchParams({ ...query, lines: TAIL_LINES })}`);
  const key = `tail-${new URLSearchParams(query)}`;
  return h('pre', { id: 'log-text', class: 'log', dataset: { key } }, body || '(empty)');
}
