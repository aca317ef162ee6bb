// Timeline: the Chrome-trace events of tasks and actor calls drawn as bars, one row per
// worker (as chrome://tracing or Perfetto would show the file `rtd timeline` writes).
import { fmtDuration, h, json, section } from './lib.js';

export const title = 'Timeline';

const ENDPOINT = '/api/v0/tasks/timeline';
const SVG = 'http://www.w3.org/2000/svg';
const ROW = 22; // px per worker row
const LABEL = 220; // px for the row labels
const AXIS = 24; // px for the time axis
const WIDTH = 1200;

export async function render() {
  return [
    await section('timeline', 'Tasks and actor calls', async () => {
      const events = await json(ENDPOINT); // a Chrome trace: a list of events, as Ray's
      return [
        h(
          'p',
          { class: 'note' },
          'Hover a bar for its details. ',
          h('a', { href: ENDPOINT, download: 'timeline.json' }, 'Download the trace'),
          ' to open it in Perfetto or chrome://tracing.',
        ),
        draw(events),
      ];
    }),
  ];
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  el.append(...children);
  return el;
}

// Rows are the trace's (pid, tid) pairs, named by its metadata events (process_name,
// thread_name) when it has them.
function draw(events) {
  const names = new Map();
  for (const e of events.filter((e) => e.ph === 'M')) {
    names.set(`${e.name}:${e.pid}:${e.name === 'thread_name' ? e.tid : ''}`, e.args?.name);
  }
  const spans = events.filter((e) => e.ph === 'X');
  if (spans.length === 0) return h('p', { id: 'timeline-empty', class: 'empty' }, 'No task has run yet.');
  const rowKeys = [...new Set(spans.map((e) => `${e.pid}\u0000${e.tid}`))].sort();
  const label = (key) => {
    const [pid, tid] = key.split('\u0000');
    const process = names.get(`process_name:${pid}:`) || pid;
    return `${process} · ${names.get(`thread_name:${pid}:${tid}`) || tid}`;
  };
  // rtd's rows are "Node <ip>" and "worker:<hex id> (pid N)": shortened to fit, whole
  // in the tooltip.
  const shortLabel = (key) => label(key).replace(/^Node /, '').replace(/worker:([0-9a-f]{6})[0-9a-f]+/, 'worker $1');
  const start = spans.reduce((min, e) => Math.min(min, e.ts), Infinity);
  const end = spans.reduce((max, e) => Math.max(max, e.ts + (e.dur || 0)), -Infinity);
  const scale = (WIDTH - LABEL - 10) / Math.max(end - start, 1);
  const height = AXIS + rowKeys.length * ROW;
  const root = svg('svg', { id: 'timeline-svg', width: WIDTH, height, viewBox: `0 0 ${WIDTH} ${height}` });
  root.append(axis(end - start, scale));
  rowKeys.forEach((key, i) => {
    const y = AXIS + i * ROW;
    root.append(
      svg('rect', { class: i % 2 ? 'row odd' : 'row', x: 0, y, width: WIDTH, height: ROW }),
      svg('text', { class: 'row-label', x: 4, y: y + ROW - 7 }, shortLabel(key), svg('title', {}, label(key))),
    );
  });
  for (const e of spans) {
    const y = AXIS + rowKeys.indexOf(`${e.pid}\u0000${e.tid}`) * ROW + 3;
    const x = LABEL + (e.ts - start) * scale;
    // Details without the empty ones (error_message of a task that did not fail).
    const details = [
      e.name,
      fmtDuration((e.dur || 0) / 1000),
      ...Object.entries(e.args || {})
        .filter(([, v]) => v !== '' && v !== null && v !== undefined)
        .map(([k, v]) => `${k}: ${v}`),
    ];
    const failed = e.args?.state === 'FAILED';
    const bar = svg(
      'rect',
      {
        class: failed ? 'event failed' : 'event',
        x,
        y,
        width: Math.max((e.dur || 0) * scale, 2),
        height: ROW - 6,
        fill: colour(e.name),
      },
      svg('title', {}, details.join('\n')),
    );
    bar.dataset.name = e.name;
    if (e.args?.task_id) bar.dataset.taskId = e.args.task_id;
    if (e.args?.state) bar.dataset.state = e.args.state;
    root.append(bar);
  }
  return h('div', { class: 'timeline-box' }, root);
}

// Ticks along the top, at a round step that gives about ten of them.
function axis(span, scale) {
  const group = svg('g', { class: 'axis' });
  const step = 10 ** Math.floor(Math.log10(span / 10 || 1));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => span / s <= 12) || step * 10;
  for (let t = 0; t <= span; t += nice) {
    const x = LABEL + t * scale;
    if (x > WIDTH - 50) break; // no room left for its label
    group.append(
      svg('line', { x1: x, x2: x, y1: AXIS - 6, y2: AXIS }),
      svg('text', { x: x + 2, y: AXIS - 9 }, fmtDuration(t / 1000)),
    );
  }
  return group;
}

// The same function always gets the same colour.
function colour(name) {
  let hash = 0;
  for (const c of name) hash = (hash * 31 + c.charCodeAt(0)) | 0;
  return `hsl(${Math.abs(hash) % 360}, 60%, 55%)`;
}
