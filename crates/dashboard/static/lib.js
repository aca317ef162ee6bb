// What every page uses: fetching the JSON API, building elements, formatting.

// An endpoint the server does not have (yet): the page shows a notice, not an error.
export class NotAvailable extends Error {
  constructor(path, message) {
    super(message);
    this.path = path;
  }
}

// The server answered, but with an error (4xx with a message, or a body that is not the API's).
export class ApiError extends Error {}

// No answer: the server is down (the cluster stopped) or too slow.
export class Unreachable extends Error {}

// A request that hangs must not stop the page's refreshes.
const TIMEOUT_MS = 10_000;

async function get(path) {
  let response;
  try {
    response = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (e) {
    throw new Unreachable(`cannot reach the dashboard server (${e.message}); is the cluster still up?`);
  }
  if (response.status === 404) {
    const body = await response.text();
    throw new NotAvailable(path.split('?')[0], messageOf(body) || 'the server has no such endpoint');
  }
  return response;
}

// The message of an error body: the API's {"msg": ...}, or its text.
function messageOf(body) {
  try {
    return JSON.parse(body).msg;
  } catch {
    return body.trim().slice(0, 300);
  }
}

// GET a JSON endpoint; returns the parsed body.
export async function json(path) {
  const response = await get(path);
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(`${path}: HTTP ${response.status}, not JSON: ${text.slice(0, 200)}`);
  }
  if (!response.ok) throw new ApiError(`${path}: ${body.msg || `HTTP ${response.status}`}`);
  return body;
}

// GET an endpoint of the state API; returns its `data` ({"result": true, "msg", "data"}).
export async function api(path) {
  const body = await json(path);
  if (body.result === false) throw new ApiError(`${path}: ${body.msg}`);
  return body.data;
}

// GET a plain-text endpoint (a log file): its text and the response's headers.
export async function text(path) {
  const response = await get(path);
  const body = await response.text();
  if (!response.ok) throw new ApiError(`${path}: ${messageOf(body) || `HTTP ${response.status}`}`);
  return { body, headers: response.headers };
}

// Rows asked of a list endpoint (the server allows up to 10 000).
const LIST_LIMIT = 1000;

// Rows of a list endpoint (/api/v0/<resource>) with the total the server knows of.
export async function list(resource, params = {}) {
  const query = new URLSearchParams({ limit: LIST_LIMIT, detail: true, ...params });
  const result = (await api(`/api/v0/${resource}?${query}`)).result;
  return { rows: result.result, total: result.total ?? result.result.length };
}

// A titled part of a page, built by `build` (async, returns its content). A failing
// endpoint spoils only its own section: "not available yet" for a 404, else the error.
export async function section(id, title, build) {
  let body;
  try {
    body = await build();
  } catch (e) {
    if (e instanceof NotAvailable) {
      body = h('p', { class: 'unavailable', dataset: { endpoint: e.path } }, `Not available yet: ${e.path} answers 404 (${e.message}).`);
    } else if (e instanceof ApiError) {
      body = h('p', { class: 'error' }, e.message);
    } else if (e instanceof Unreachable) {
      body = h('p', { class: 'error unreachable' }, e.message);
    } else {
      console.error(e); // a bug in the page: the browser test fails on it
      body = h('p', { class: 'error' }, `This section failed: ${e}`);
    }
  }
  return h('section', { id, class: 'card' }, h('h2', {}, title), body);
}

// h('td', {class: 'x', dataset: {state: 'ALIVE'}}, child, ...) -> an element. Children
// are nodes or strings; null, undefined and false are left out; arrays are flattened.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// A table: columns are [heading, (row) -> cell content]; rowAttrs(row) gives the <tr>'s attributes.
export function table(id, columns, rows, rowAttrs = () => ({}), empty = 'None.') {
  if (rows.length === 0) return h('p', { id, class: 'empty' }, empty);
  return h(
    'table',
    { id },
    h('thead', {}, h('tr', {}, columns.map(([heading]) => h('th', {}, heading)))),
    h(
      'tbody',
      {},
      rows.map((row) =>
        h(
          'tr',
          rowAttrs(row),
          columns.map(([heading, cell]) => h('td', { dataset: { field: slug(heading) } }, cell(row) ?? '')),
        ),
      ),
    ),
  );
}

export function slug(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_|_$/g, '');
}

// A state as a coloured badge (ALIVE, DEAD, FINISHED, FAILED, ...).
export function badge(state) {
  return h('span', { class: `badge state-${slug(state || 'unknown')}` }, state || '?');
}

// A long hex id shortened for a table; the whole id is in the tooltip and copyable.
export function shortId(id) {
  if (!id) return '';
  return h('code', { class: 'id', title: id }, id.length > 12 ? `${id.slice(0, 8)}…` : id);
}

// A usage bar: `used` of `total`, with the figures written on it.
export function bar(resource, used, total, format = fmtNumber) {
  const share = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  return h(
    'div',
    { class: 'bar', dataset: { resource, used, total }, title: `${resource}: ${format(used)} / ${format(total)}` },
    h('div', { class: `fill${share > 0.9 ? ' high' : ''}`, style: `width: ${(share * 100).toFixed(1)}%` }),
    h('span', {}, `${format(used)} / ${format(total)}`),
  );
}

export function fmtNumber(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(2).replace(/\.?0+$/, '');
}

export function fmtBytes(n) {
  if (n === null || n === undefined || n < 0) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return minutes < 60 ? `${minutes} min ${Math.round((ms % 60_000) / 1000)} s` : `${(minutes / 60).toFixed(1)} h`;
}

export function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : '';
}

// Counts of rows by a key: [[key, count], ...] in first-seen order.
export function countBy(rows, key) {
  const counts = new Map();
  for (const row of rows) counts.set(key(row), (counts.get(key(row)) || 0) + 1);
  return [...counts];
}

// Node ids to a short readable label ("10.0.0.5 3fa2c1 (head)": nodes of a cluster on one
// machine share their IP), from the nodes endpoint.
export async function nodeLabels() {
  const { rows } = await list('nodes');
  return new Map(rows.map((n) => [n.node_id, nodeLabel(n)]));
}

export function nodeLabel(node) {
  return `${node.node_ip} ${node.node_id.slice(0, 6)}${node.is_head_node ? ' (head)' : ''}`;
}

export function nodeCell(labels, nodeId) {
  if (!nodeId) return '';
  return h('span', { title: nodeId, dataset: { nodeId } }, labels.get(nodeId) || `${nodeId.slice(0, 8)}…`);
}

// The cluster-wide part of a summarize endpoint (/api/v0/{tasks,actors}/summarize), as
// Ray's state API answers it: {"result": {"result": {"node_id_to_summary": {"cluster": ...}}}}.
export async function clusterSummary(resource) {
  const data = await api(`/api/v0/${resource}/summarize`);
  return data.result.result.node_id_to_summary.cluster;
}

// Summed state counts of a summary's groups ({name: {state_counts: {STATE: n}}}).
export function stateTotals(groups) {
  const totals = {};
  for (const group of Object.values(groups)) {
    for (const [state, n] of Object.entries(group.state_counts || {})) totals[state] = (totals[state] || 0) + n;
  }
  return totals;
}

// {STATE: n} as badges with counts, in the given order (others after).
export function stateCounts(id, counts, order = []) {
  const states = [...order.filter((s) => s in counts), ...Object.keys(counts).filter((s) => !order.includes(s))];
  if (states.length === 0) return h('p', { id, class: 'empty' }, 'None yet.');
  return h(
    'div',
    { id, class: 'state-counts' },
    states.map((s) => h('span', { class: 'count', dataset: { state: s, count: counts[s] } }, badge(s), ` ${counts[s]}`)),
  );
}

// Ray's task states in the order a task goes through them.
export const TASK_STATES = [
  'PENDING_ARGS_AVAIL',
  'PENDING_NODE_ASSIGNMENT',
  'SUBMITTED_TO_WORKER',
  'RUNNING',
  'FINISHED',
  'FAILED',
];

export const ACTOR_STATES = ['DEPENDENCIES_UNREADY', 'PENDING_CREATION', 'ALIVE', 'RESTARTING', 'DEAD'];
