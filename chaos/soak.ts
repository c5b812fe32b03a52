// npm run soak -- --minutes 30 [--seed N] [--keep]
// The server restarts every 5-10 s, down 0-2 s each time (fast or immediate, seeded), while a
// new small execution is submitted every 2-4 s and three workers process them. At the end
// everything must become terminal and keep the invariants; prints the chaos table's row and the
// throughput per minute. Exits non-zero on any violation.
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startCluster, type Cluster } from './cluster.js';
import type { Expectation } from './invariants.js';
import { allTerminal, progress } from './progress.js';
import { freshSeed, random, type Random } from './random.js';
import { inspect, type RunResult } from './run.js';
import { submit } from './submit.js';
import { details, legend, table } from './table.js';
import { pause, waitFor } from './wait.js';
import { WorkerFleet } from './workers.js';
import { createWorkload, defaultWorkload } from './workload.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    seed: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const minutes = Number(values.minutes);
if (!(minutes > 0 && minutes <= 24 * 60)) {
  process.stderr.write(`--minutes must be a number above 0, got "${values.minutes}"\n`);
  process.exit(2);
}
const seed = values.seed === undefined ? freshSeed() : Number(values.seed);
const out = (text: string) => process.stdout.write(`${text}\n`);

interface Restart {
  at: number;
  endedAt?: number;
  mode: 'fast' | 'immediate';
  downMs: number;
}

/** Restarts the server at seeded moments until `end`; resolves with the server up. */
async function restarts(cluster: Cluster, rng: Random, end: number, done: Restart[]) {
  for (;;) {
    const wait = rng.int(5_000, 10_000);
    if (Date.now() + wait >= end) return;
    await pause(wait);
    const restart: Restart = {
      at: Date.now(),
      mode: rng.pick(['fast', 'immediate'] as const),
      downMs: rng.int(0, 2_000),
    };
    await cluster.server.stop(restart.mode);
    await pause(restart.downMs);
    await cluster.server.start();
    done.push({ ...restart, endedAt: Date.now() });
  }
}

interface Submitted extends Expectation {
  executionId?: string;
  failure?: string;
}

/** A new execution of 20-60 files every 2-4 s until `end`, submitted through the proxy. */
async function submissions(
  cluster: Cluster,
  rng: Random,
  dir: string,
  end: number,
  done: Submitted[],
) {
  while (Date.now() < end) {
    const folder = join(dir, `submission-${done.length + 1}`);
    await mkdir(folder);
    const workload = await createWorkload(folder, rng, {
      ...defaultWorkload,
      files: rng.int(20, 60),
      seed: seed + done.length,
    });
    const result = await submit(workload.workflowFile, cluster.workerUrl, false, folder, 120_000);
    done.push({ ...workload, ...result });
    await pause(rng.int(2_000, 4_000));
  }
}

/** Files that became terminal in each minute of the soak (and the drain after it). */
async function throughput(
  cluster: Cluster,
  started: number,
): Promise<{ minute: number; files: number; seconds: number }[]> {
  const { rows } = await cluster.admin.query<{ minute: number; files: number; last: number }>(
    `SELECT floor(extract(epoch FROM finished_at - to_timestamp($1::float8 / 1000)) / 60)::int AS minute,
            count(*)::int AS files,
            max(extract(epoch FROM finished_at))::float8 * 1000 AS last
     FROM unstuck.file_executions WHERE finished_at IS NOT NULL GROUP BY 1 ORDER BY 1`,
    [started],
  );
  // The last minute may be partial: its rate is over the time it really lasted.
  return rows.map((r) => ({
    minute: r.minute,
    files: r.files,
    seconds: Math.min(60, Math.max(1, (r.last - started) / 1000 - r.minute * 60)),
  }));
}

const started = Date.now();
const end = started + minutes * 60_000;
const dir = await mkdtemp(join(tmpdir(), `unstuck-soak-${seed}-`));
const violations: string[] = [];
const done: Restart[] = [];
const submitted: Submitted[] = [];
out(
  `soak: ${minutes} min, seed ${seed}, server restarts every 5-10 s for 0-2 s, a new execution every 2-4 s`,
);
const cluster = await startCluster('proxy');
const fleet = new WorkerFleet({
  databaseUrl: cluster.workerUrl,
  pgbouncer: false,
  dir,
  concurrency: 4,
});
let faultEnd: number | undefined;
try {
  await fleet.startMany(3);
  const ticker = setInterval(() => {
    void progress(cluster.admin).then(
      (p) =>
        out(
          `  ${((Date.now() - started) / 1000).toFixed(0)} s: ${done.length} restarts, ${submitted.length} executions, ${p.done}/${p.files} files done`,
        ),
      () => out(`  ${((Date.now() - started) / 1000).toFixed(0)} s: server down`),
    );
  }, 30_000);
  await Promise.all([
    restarts(cluster, random(seed, 'restarts'), end, done),
    submissions(cluster, random(seed, 'submissions'), dir, end, submitted),
  ]);
  clearInterval(ticker);
  faultEnd = done.at(-1)?.endedAt;
  const expectedFiles = submitted
    .filter((s) => s.executionId)
    .reduce((n, s) => n + s.files.size, 0);
  await waitFor(() => allTerminal(cluster.admin, expectedFiles), {
    timeoutMs: 120_000,
    intervalMs: 100,
    message: 'every file and execution to be terminal after the soak',
  }).catch((error: Error) => violations.push(`I1 ${error.message}`));
} catch (error) {
  violations.push(`harness: ${(error as Error).message}`);
}
for (const s of submitted.filter((s) => s.failure))
  violations.push(`submission failed: ${s.failure}`);
const expected = submitted.filter((s) => s.executionId);
const outcome = await inspect(cluster, fleet, expected, faultEnd, violations);
const rates = await throughput(cluster, started).catch(() => []);
await cluster.destroy();
const result: RunResult = {
  name: 'soak-restarts',
  seed,
  ...outcome,
  seconds: (Date.now() - started) / 1000,
  notes: [
    `${done.length} restarts (${done.filter((r) => r.mode === 'immediate').length} immediate), ` +
      `down ${(done.reduce((n, r) => n + r.downMs, 0) / 1000).toFixed(1)} s in all`,
    `${submitted.length} executions submitted`,
  ],
  violations,
  dir,
};
out('');
out(table([result]));
out(legend);
out('');
out(details(result));
out('');
out('throughput (files that became terminal):');
for (const r of rates) {
  const restartsIn = done.filter((d) => Math.floor((d.at - started) / 60_000) === r.minute).length;
  const label = `minute ${r.minute + 1}${r.minute >= minutes ? ' (drain)' : ''}`;
  out(
    `  ${label}: ${String(r.files).padStart(6)} files, ${(r.files / r.seconds).toFixed(1).padStart(6)} files/s, ${restartsIn} restarts`,
  );
}
if (violations.length === 0 && !values.keep) await rm(dir, { recursive: true, force: true });
out(
  violations.length === 0
    ? '\nsoak kept every invariant'
    : `\nsoak broke an invariant; logs in ${dir}`,
);
process.exit(violations.length > 0 ? 1 : 0);
