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
    // The worker's stdout, or its stderr (where tracebacks and warnings go).
    const suffix = params.get('suffix') === 'err' ? 'err' : 'out';
    return [
      await section('log-tail', `Log of ${kind} ${id.slice(0, 8)}…`, async () => [
        streamPicker(kind, id, suffix),
        await tail({ [`${kind}_id`]: id, suffix }),
      ]),
    ];
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
    nodeId && filename
      ? section('log-tail', filename, () => tail({ node_id: nodeId, filename }))
      : h('p', { class: 'note' }, 'Choose a file to follow it; an actor’s or task’s own log is linked from its row.'),
  ]);
}

function streamPicker(kind, id, current) {
  return h(
    'div',
    { id: 'log-streams', class: 'chips' },
    [
      ['out', 'stdout'],
      ['err', 'stderr'],
    ].map(([suffix, label]) =>
      h(
        'a',
        {
          href: `#/logs?${new URLSearchParams({ [`${kind}_id`]: id, suffix })}`,
          class: suffix === current ? 'chip current' : 'chip',
          dataset: { suffix },
        },
        label,
      ),
    ),
  );
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

// What a tail has shown so far, by what it reads ({text, end}): each refresh asks only
// for what was written since (`offset=` the last read's `x-rtd-end-offset`).
const followed = new Map();
// The most of a followed log kept on the page.
const KEEP_CHARS = 1_000_000;

async function tail(query) {
  const key = `tail-${new URLSearchParams(query)}`;
  const seen = followed.get(key);
  let shown;
  if (seen && seen.end > 0) {
    const { body, headers } = await text(`/api/v0/logs/file?${new URLSearchParams({ ...query, offset: seen.end })}`);
    const end = Number(headers.get('x-rtd-end-offset'));
    // An end before where the last read ended: the file was replaced (a restarted
    // actor's new worker); start again from its tail.
    shown = end >= seen.end ? { text: keepEnd(seen.text + body), end } : null;
  }
  if (!shown) {
    const { body, headers } = await text(`/api/v0/logs/file?${new URLSearchParams({ ...query, lines: TAIL_LINES })}`);
    shown = { text: body, end: Number(headers.get('x-rtd-end-offset')) || 0 };
  }
  followed.clear(); // only the log on the page is followed
  followed.set(key, shown);
  return h('pre', { id: 'log-text', class: 'log', dataset: { key, endOffset: shown.end } }, shown.text || '(empty)');
}

// The end of a long log, from a line's start.
function keepEnd(s) {
  if (s.length <= KEEP_CHARS) return s;
  const cut = s.indexOf('\n', s.length - KEEP_CHARS);
  return cut < 0 ? s.slice(-KEEP_CHARS) : s.slice(cut + 1);
}
