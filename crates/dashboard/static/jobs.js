// Jobs: every job submitted through the jobs API and every driver that connected, newest first.
import { badge, fmtDuration, fmtTime, h, list, section, shortId, table } from './lib.js';

export const title = 'Jobs';

export async function render() {
  return [
    await section('jobs', 'Jobs', async () => {
      const { rows } = await list('jobs');
      const sorted = [...rows].sort((a, b) => (b.start_time ?? 0) - (a.start_time ?? 0));
      return table(
        'jobs-table',
        [
          ['Job ID', (j) => shortId(j.job_id)],
          ['Submission ID', (j) => j.submission_id || ''],
          ['Status', (j) => badge(j.status)],
          ['Entrypoint', (j) => h('code', {}, j.entrypoint || '')],
          ['Driver', (j) => (j.driver_info ? `${j.driver_info.node_ip_address} pid ${j.driver_info.pid}` : '')],
          ['Started', (j) => fmtTime(j.start_time)],
          ['Duration', (j) => (j.start_time ? fmtDuration((j.end_time || Date.now()) - j.start_time) : '')],
          ['Message', (j) => j.message || ''],
        ],
        sorted,
        (j) => ({ dataset: { jobId: j.job_id, status: j.status } }),
        'No jobs.',
      );
    }),
  ];
}
