// Actors: one row per actor (as Ray's Actors page), with a link to its log.
import { ACTOR_STATES, badge, countBy, h, list, nodeCell, nodeLabels, section, shortId, stateCounts, table } from './lib.js';

export const title = 'Actors';

export async function render() {
  return [
    await section('actors', 'Actors', async () => {
      const [{ rows, total }, labels] = await Promise.all([list('actors'), nodeLabels()]);
      return [
        stateCounts('actor-state-counts', Object.fromEntries(countBy(rows, (a) => a.state)), ACTOR_STATES),
        rows.length < total ? h('p', { class: 'note' }, `Showing ${rows.length} of ${total} actors.`) : null,
        actorsTable(rows, labels),
      ];
    }),
  ];
}

function actorsTable(rows, labels) {
  // Live actors first, then by class and name.
  const sorted = [...rows].sort(
    (a, b) =>
      (a.state === 'DEAD') - (b.state === 'DEAD') ||
      a.class_name.localeCompare(b.class_name) ||
      (a.name || '').localeCompare(b.name || ''),
  );
  return table(
    'actors-table',
    [
      ['Actor ID', (a) => shortId(a.actor_id)],
      ['Class', (a) => a.class_name],
      ['Name', (a) => a.name || ''],
      ['State', (a) => badge(a.state)],
      ['Node', (a) => nodeCell(labels, a.node_id)],
      ['PID', (a) => a.pid || ''],
      ['Restarts', (a) => String(a.num_restarts ?? 0)],
      ['Namespace', (a) => a.ray_namespace || ''],
      ['Job', (a) => shortId(a.job_id)],
      ['Death cause', (a) => deathCause(a.death_cause)],
      ['Log', (a) => h('a', { href: `#/logs?actor_id=${a.actor_id}`, class: 'log-link' }, 'log')],
    ],
    sorted,
    (a) => ({ dataset: { actorId: a.actor_id, state: a.state, className: a.class_name } }),
    'No actors.',
  );
}

// Ray's death cause is a nested message ({actor_died_error_context: {error_message, ...}});
// show its first error message line, with the whole of it in the tooltip.
function deathCause(cause) {
  if (!cause) return '';
  if (typeof cause === 'string') return cause;
  const text = errorMessage(cause) || JSON.stringify(cause);
  return h('span', { class: 'death-cause', title: JSON.stringify(cause, null, 2) }, text.split('\n')[0]);
}

function errorMessage(value) {
  if (!value || typeof value !== 'object') return null;
  if (typeof value.error_message === 'string') return value.error_message;
  for (const inner of Object.values(value)) {
    const found = errorMessage(inner);
    if (found) return found;
  }
  return null;
}
