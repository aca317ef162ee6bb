// Tasks: counts by state for each function (as `ray summary tasks`), the most recent
// tasks with their durations, and the failed ones with their tracebacks.
import {
  TASK_STATES,
  badge,
  clusterSummary,
  fmtDuration,
  fmtTime,
  h,
  list,
  nodeCell,
  nodeLabels,
  section,
  shortId,
  table,
} from './lib.js';

export const title = 'Tasks';

const RECENT = 100; // rows in the recent-tasks table

export async function render() {
  const tasks = list('tasks');
  return Promise.all([
    section('task-summary', 'By function', async () => {
      const [summary, { rows }] = await Promise.all([clusterSummary('tasks'), tasks]);
      return summaryTable(summary.summary, rows);
    }),
    section('recent-tasks', 'Recent tasks', async () => recent(...(await Promise.all([tasks, nodeLabels()])))),
    section('task-errors', 'Errors', async () =>
      errors((await list('tasks', { filter_keys: 'state', filter_predicates: '=', filter_values: 'FAILED' })).rows),
    ),
  ]);
}

// The summary has no task type; the listed tasks of the same function tell it.
function summaryTable(groups, tasks) {
  const types = new Map(tasks.map((t) => [t.func_or_class_name, t.type]));
  const rows = Object.entries(groups).map(([func, g]) => ({ func, type: types.get(func), ...g }));
  rows.sort((a, b) => a.func.localeCompare(b.func));
  const count = (row, state) => row.state_counts?.[state] ?? 0;
  return table(
    'task-summary-table',
    [
      ['Function', (r) => h('code', {}, r.func)],
      ['Type', (r) => r.type || ''],
      // Headings that can wrap, so the table fits.
      ...TASK_STATES.map((state) => [state.replaceAll('_', ' '), (r) => h('span', { dataset: { state } }, String(count(r, state)))]),
      ['Progress', (r) => stateBar(r.state_counts || {})],
    ],
    rows,
    (r) => ({ dataset: { func: r.func } }),
    'No tasks yet.',
  );
}

// A bar split by state: finished, failed, running and waiting shares side by side.
function stateBar(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  return h(
    'div',
    { class: 'stacked', title: Object.entries(counts).map(([s, n]) => `${s}: ${n}`).join('\n') },
    TASK_STATES.filter((s) => counts[s]).map((s) =>
      h('div', { class: `state-${s.toLowerCase()}`, style: `width: ${(100 * counts[s]) / total}%` }),
    ),
  );
}

function duration(task) {
  if (!task.start_time_ms) return '';
  const end = task.end_time_ms || Date.now();
  return fmtDuration(end - task.start_time_ms) + (task.end_time_ms ? '' : ' so far');
}

// When a task last changed: it ended, started or was created (detail columns).
function lastActive(task) {
  return Math.max(task.end_time_ms ?? 0, task.start_time_ms ?? 0, task.creation_time_ms ?? 0);
}

function recent({ rows, total }, labels) {
  // Latest first; a task that is still going counts as active now.
  const key = (t) => (t.end_time_ms || !t.start_time_ms ? lastActive(t) : Infinity);
  const sorted = [...rows].sort((a, b) => key(b) - key(a) || lastActive(b) - lastActive(a)).slice(0, RECENT);
  // A list answers at most lib.js's LIST_LIMIT rows, in id order, not by time.
  const read = rows.length < total ? ` of the ${rows.length} read (${total} in all)` : ` of ${total}`;
  return [
    h('p', { class: 'note' }, `The ${sorted.length} most recently active tasks${read}, running ones first.`),
    table(
      'tasks-table',
      [
        ['Task ID', (t) => shortId(t.task_id)],
        ['Name', (t) => h('code', {}, t.name)],
        ['State', (t) => badge(t.state)],
        ['Type', (t) => t.type],
        ['Node', (t) => nodeCell(labels, t.node_id)],
        ['PID', (t) => (t.worker_pid ? h('span', { title: `worker ${t.worker_id}` }, String(t.worker_pid)) : '')],
        ['Attempt', (t) => String(t.attempt_number ?? 0)],
        ['Created', (t) => fmtTime(t.creation_time_ms)],
        ['Duration', duration],
        ['Error', (t) => t.error_type || ''],
        ['Log', (t) => (t.worker_pid ? h('a', { href: `#/logs?task_id=${t.task_id}`, class: 'log-link' }, 'log') : '')],
      ],
      sorted,
      (t) => ({ dataset: { taskId: t.task_id, state: t.state, name: t.name, lastActiveMs: lastActive(t) } }),
      'No tasks yet.',
    ),
  ];
}

function errors(rows) {
  if (rows.length === 0) return h('p', { id: 'task-errors-list', class: 'empty' }, 'No failed tasks.');
  const sorted = [...rows].sort((a, b) => (b.end_time_ms ?? 0) - (a.end_time_ms ?? 0));
  return h(
    'div',
    { id: 'task-errors-list' },
    sorted.map((t) =>
      h(
        'details',
        { class: 'task-error', dataset: { key: `error-${t.task_id}-${t.attempt_number}`, taskId: t.task_id } },
        h('summary', {}, badge(t.error_type || 'FAILED'), ' ', h('code', {}, t.name), ` · ${fmtTime(t.end_time_ms)} · `, shortId(t.task_id)),
        h('pre', { class: 'traceback' }, t.error_message || '(no message)'),
      ),
    ),
  );
}
