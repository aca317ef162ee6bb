// The single-page app: the hash names the page (#/actors, #/logs?actor_id=...); the
// current page is rebuilt from the JSON API every REFRESH_MS, without reloading.
import * as actors from './actors.js';
import * as jobs from './jobs.js';
import { h } from './lib.js';
import * as logs from './logs.js';
import * as objects from './objects.js';
import * as overview from './overview.js';
import * as placementGroups from './placement_groups.js';
import * as tasks from './tasks.js';
import * as timeline from './timeline.js';

const REFRESH_MS = 1500;

const pages = {
  overview,
  jobs,
  actors,
  tasks,
  'placement-groups': placementGroups,
  objects,
  logs,
  timeline,
};

function route() {
  const [name, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { name: name in pages ? name : 'overview', params: new URLSearchParams(query || '') };
}

let generation = 0;
let timer;
let refreshes = 0;

async function refresh() {
  clearTimeout(timer);
  generation += 1;
  const mine = generation;
  const { name, params } = route();
  const page = pages[name];
  try {
    const content = await page.render(params); // sections catch their own errors
    // A route change while this page was being fetched started a newer refresh.
    if (mine === generation) show(name, page, content);
  } finally {
    if (mine === generation) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function show(name, page, content) {
  const main = document.getElementById('page');
  const kept = keptState(main);
  const root = h('div', { id: `page-${name}`, class: 'page', dataset: { page: name } }, h('h1', {}, page.title), content);
  main.replaceChildren(root);
  restoreState(root, kept);
  document.title = `${page.title} · rtd dashboard`;
  for (const link of document.querySelectorAll('#nav a')) {
    link.toggleAttribute('aria-current', link.dataset.page === name);
  }
  refreshes += 1;
  const status = document.getElementById('refresh-status');
  status.dataset.refreshes = refreshes;
  // The cluster stopped (or the server is too slow): the page keeps trying.
  const offline = root.querySelector('.unreachable') !== null;
  status.classList.toggle('offline', offline);
  status.textContent = `${offline ? 'Server unreachable, retrying' : 'Live'} · ${new Date().toLocaleTimeString()}`;
}

// What the user did to the old page that a rebuild must not undo: opened <details>
// (a traceback) and scrolled boxes (a log tail that follows its end), found by data-key.
function keptState(root) {
  const kept = new Map();
  for (const el of root.querySelectorAll('[data-key]')) {
    kept.set(el.dataset.key, {
      open: el.open,
      scrollTop: el.scrollTop,
      atEnd: el.scrollTop + el.clientHeight >= el.scrollHeight - 4,
    });
  }
  return kept;
}

function restoreState(root, kept) {
  for (const el of root.querySelectorAll('[data-key]')) {
    const old = kept.get(el.dataset.key);
    if (el.tagName === 'DETAILS' && old) el.open = old.open;
    // A box seen for the first time, or scrolled to its end, follows its end.
    if (!old || old.atEnd) el.scrollTop = el.scrollHeight;
    else el.scrollTop = old.scrollTop;
  }
}

window.addEventListener('hashchange', refresh);
refresh();
