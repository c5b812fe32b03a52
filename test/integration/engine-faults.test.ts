// The engine under real faults, with workers as separate OS processes: a worker SIGKILLed
// mid-file, a storm of terminated backends, a connection cut after the commit was sent (through
// the fault proxy), and an immediate server restart. Whatever fails, every file ends terminal,
// with exactly one result per COMPLETED file (I1-I4).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { loadConfig } from '../../src/config.js';
import type { Database } from '../../src/db/database.js';
import { claimFiles, finishFiles, type HeldFile, type Outcome } from '../../src/engine/queue.js';
import { dbMetrics } from '../../src/metrics.js';
import { Unstuck } from '../../src/unstuck.js';
import { countFrom, testDatabase, testSeed, waitFor, withSeed } from '../harness/db.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { TempFolders } from '../harness/temp-folders.js';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const fixture = (name: string) => join(repo, 'test/fixtures/engine', name);

let server: TestServer;
const temp = new TempFolders({ prefix: 'unstuck-faults-' });
const handles: Unstuck[] = [];
const databases: Database[] = [];
const children = new Set<ChildProcess>();

before(async () => {
  server = await startTestServer();
});
after(async () => {
  for (const child of children) child.kill('SIGKILL');
  for (const u of handles) await u.close().catch(() => undefined);
  for (const db of databases) await db.close().catch(() => undefined);
  await server?.destroy();
  await temp.removeAll();
});

// Patient retries, short backoff: the faults here last seconds, and must be outlasted.
const retryEnv = {
  DB_RETRY_MAX_RETRIES: '200',
  DB_RETRY_BASE_DELAY: '0.02',
  DB_RETRY_MAX_DELAY: '0.5',
  DB_RETRY_BUDGET: '120',
  DB_CONNECT_TIMEOUT: '2',
  DB_POOL_SIZE: '6',
};

async function open(url: string): Promise<Unstuck> {
  const config = loadConfig({
    DATABASE_URL: url,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    ...retryEnv,
  });
  const u = await Unstuck.open({ config });
  handles.push(u);
  return u;
}

async function sourceFolder(count: number): Promise<string> {
  const folder = await temp.make('unstuck-faults-source-');
  await Promise.all(
    Array.from({ length: count }, (_, i) =>
      writeFile(join(folder, `file-${String(i).padStart(4, '0')}.txt`), `content ${i}\n`),
    ),
  );
  return folder;
}

interface WorkerProcess {
  child: ChildProcess;
  /** The worker's id (its lease owner), once it runs. */
  id: Promise<string>;
  output(): string;
  exited: Promise<number | null>;
}

/** A worker in its own process, on the test database, its logs kept for a failure report. */
function spawnWorker(url: string, env: Record<string, string> = {}): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture('worker.ts')], {
    cwd: repo,
    env: {
      ...process.env,
      ...retryEnv,
      DATABASE_URL: url,
      LOG_LEVEL: 'warn',
      LOG_FORMAT: 'json',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let log = '';
  const keep = (chunk: Buffer) => (log = (log + chunk.toString()).slice(-20_000));
  child.stderr!.on('data', keep);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      children.delete(child);
      resolve(code);
    }),
  );
  const id = new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      keep(chunk);
      const ready = /\{"ready":"([^"]+)"\}/.exec(out);
      if (ready) resolve(ready[1]!);
    });
    void exited.then((code) => reject(new Error(`worker exited (${code}) before it was ready`)));
  });
  id.catch(() => undefined);
  return { child, id, output: () => log, exited };
}

/** Stops a worker process cleanly (SIGTERM), or kills it if it does not exit in time. */
async function stopWorker(worker: WorkerProcess): Promise<void> {
  if (worker.child.exitCode !== null || worker.child.signalCode !== null) return;
  worker.child.kill('SIGTERM');
  const timer = setTimeout(() => worker.child.kill('SIGKILL'), 15_000);
  await worker.exited;
  clearTimeout(timer);
}

/** Runs `body`; on failure prints the workers' logs and the seed, so the failure can be read. */
async function reporting(
  t: TestContext,
  workers: WorkerProcess[],
  body: () => Promise<void>,
): Promise<void> {
  try {
    await body();
  } catch (error) {
    for (const [i, w] of workers.entries()) {
      t.diagnostic(`worker ${i} (pid ${w.child.pid}) log tail:`);
      for (const line of w.output().slice(-4000).split('\n')) t.diagnostic(`  ${line}`);
    }
    t.diagnostic(`TEST_SEED=${testSeed}`);
    throw error;
  } finally {
    await Promise.all(workers.map(stopWorker));
  }
}

async function statusCounts(db: Database, executionId: string): Promise<Record<string, number>> {
  const { rows } = await db.query<{ status: string; n: number }>(
    'SELECT status, count(*)::int AS n FROM unstuck.file_executions WHERE execution_id = $1 GROUP BY status',
    [executionId],
  );
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/**
 * I1-I4 for a finished execution: every file terminal, counters equal to a GROUP BY, final
 * status with finished_at, exactly one result per COMPLETED file and none for the others.
 */
async function assertSettled(db: Database, executionId: string, total: number) {
  const counts = await statusCounts(db, executionId);
  assert.equal(
    (counts.PENDING ?? 0) + (counts.EXECUTING ?? 0),
    0,
    withSeed(`every file terminal: ${JSON.stringify(counts)}`),
  );
  const { rows: executions } = await db.query<{
    status: string;
    total: number;
    completed: number;
    failed: number;
    stopped: number;
    finished: boolean;
  }>(
    `SELECT status, total, completed, failed, stopped, finished_at IS NOT NULL AS finished
     FROM unstuck.workflow_executions WHERE id = $1`,
    [executionId],
  );
  const execution = executions[0]!;
  assert.deepEqual(
    execution,
    {
      status: (counts.COMPLETED ?? 0) > 0 ? 'COMPLETED' : 'ERROR',
      total,
      completed: counts.COMPLETED ?? 0,
      failed: counts.ERROR ?? 0,
      stopped: counts.STOPPED ?? 0,
      finished: true,
    },
    withSeed('the execution is final and its counters equal a GROUP BY'),
  );
  const { rows: wrong } = await db.query<{ path: string; status: string; results: number }>(
    `SELECT f.path, f.status, count(r.*)::int AS results
     FROM unstuck.file_executions f LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     WHERE f.execution_id = $1
     GROUP BY f.id HAVING count(r.*) <> CASE WHEN f.status = 'COMPLETED' THEN 1 ELSE 0 END`,
    [executionId],
  );
  assert.deepEqual(wrong, [], withSeed('one result per COMPLETED file, none for the others'));
  const { rows: stray } = await db.query(
    `SELECT r.file_execution_id FROM unstuck.file_results r
     LEFT JOIN unstuck.file_executions f ON f.id = r.file_execution_id
     WHERE r.execution_id = $1 AND (f.id IS NULL OR f.execution_id <> r.execution_id)`,
    [executionId],
  );
  assert.deepEqual(stray, [], 'no result outside the execution’s files');
  return counts;
}

/** Submits `count` files through a step that takes `ms` each. */
async function submitSleepy(u: Unstuck, count: number, ms: number) {
  return u.submit({
    name: `sleepy-${count}`,
    source: { type: 'local', path: await sourceFolder(count) },
    steps: [{ use: fixture('sleep.mjs'), options: { ms } }],
    options: { maxAttempts: 10, leaseSeconds: 5, retryDelaySeconds: 0.05, stepTimeoutSeconds: 30 },
  });
}

async function completedCount(u: Unstuck, executionId: string): Promise<number> {
  return (await statusCounts(u.db, executionId)).COMPLETED ?? 0;
}

/** How many files took how many attempts, for the test's diagnostics. */
async function attemptsHistogram(db: Database, executionId: string): Promise<string> {
  const { rows } = await db.query<{ attempt: number; n: number }>(
    `SELECT attempt, count(*)::int AS n FROM unstuck.file_executions WHERE execution_id = $1
     GROUP BY attempt ORDER BY attempt`,
    [executionId],
  );
  return rows.map((r) => `${r.n} at attempt ${r.attempt}`).join(', ');
}

function assertAlive(workers: WorkerProcess[]): void {
  for (const w of workers) {
    assert.equal(w.child.exitCode, null, `worker ${w.child.pid} did not exit by itself`);
    assert.equal(w.child.signalCode, null, `worker ${w.child.pid} was not killed`);
  }
}

describe('engine under faults', () => {
  test('a worker SIGKILLed mid-file: another worker completes it after the lease, once', async (t) => {
    const url = await server.createDatabase();
    const u = await open(url);
    const gateFolder = await temp.make('unstuck-faults-gate-');
    const started = join(gateFolder, 'started');
    const release = join(gateFolder, 'release');
    await mkdir(started);
    const { executionId, total } = await u.submit({
      name: 'sigkill',
      source: { type: 'local', path: await sourceFolder(3) },
      steps: [{ use: fixture('gate.mjs'), options: { started, release } }],
      options: { leaseSeconds: 2, maxAttempts: 3, stepTimeoutSeconds: 60 },
    });
    const victim = spawnWorker(url, { WORKER_CONCURRENCY: '1' });
    await reporting(t, [victim], async () => {
      const owner = await victim.id;
      // EXECUTING under the victim's lease, and its step really running in that process.
      const held = await waitFor(
        async () => {
          const { rows } = await u.db.query<{ id: string; path: string }>(
            `SELECT id::text, path FROM unstuck.file_executions
             WHERE execution_id = $1 AND status = 'EXECUTING' AND lease_owner = $2`,
            [executionId, owner],
          );
          const markers = await readdir(started);
          const inStep = rows.filter((r) =>
            markers.includes(`${encodeURIComponent(r.path)}.1.${victim.child.pid}`),
          );
          return inStep[0];
        },
        { timeoutMs: 20_000, message: 'the victim to be in a file’s step' },
      );
      victim.child.kill('SIGKILL');
      await victim.exited;
      const killedAt = Date.now();
      await writeFile(release, '');

      const rescuer = u.worker({ concurrency: 2, sweepIntervalMs: 200, pollIntervalMs: 50 });
      rescuer.start();
      try {
        const end = await u.wait(executionId, {
          intervalMs: 50,
          signal: AbortSignal.timeout(20_000),
        });
        assert.equal(end.status, 'COMPLETED');
        assert.equal(end.completed, total);
      } finally {
        await rescuer.stop();
      }
      const { rows } = await u.db.query<{ attempt: number; owner: string }>(
        'SELECT attempt, lease_owner AS owner FROM unstuck.file_executions WHERE id = $1',
        [held.id],
      );
      // Only the sweep of an expired lease moves a file on to a new attempt.
      assert.equal(rows[0]!.attempt, 2, 'the killed attempt was taken over by a new one');
      assert.equal(rows[0]!.owner, rescuer.id);
      t.diagnostic(`rescued ${Date.now() - killedAt} ms after the kill (lease 2 s)`);
      await assertSettled(u.db, executionId, total);
    });
  });

  test('a storm of terminated backends during a 500-file run with 3 worker processes', async (t) => {
    const url = await server.createDatabase();
    const database = new URL(url).pathname.slice(1);
    const u = await open(url);
    const { executionId, total } = await submitSleepy(u, 500, 80);
    assert.equal(total, 500);
    const workers = [0, 1, 2].map(() => spawnWorker(url));
    await reporting(t, workers, async () => {
      await Promise.all(workers.map((w) => w.id));
      await waitFor(async () => (await completedCount(u, executionId)) >= 10, {
        timeoutMs: 30_000,
        message: 'the run to be under way',
      });
      const stormStarted = Date.now();
      // A round every 200 ms, not waiting for the last: terminateBackends waits for each
      // backend to go (about 100 ms apiece), which would stretch the cadence.
      let rounds = 0;
      let terminated = 0;
      const calls: Promise<void>[] = [];
      const storm = setInterval(() => {
        rounds++;
        calls.push(
          server.terminateBackends(database).then(
            (n) => void (terminated += n),
            () => undefined,
          ),
        );
      }, 200);
      try {
        await waitFor(
          async () =>
            ['COMPLETED', 'ERROR', 'STOPPED'].includes((await u.status(executionId))!.status),
          { timeoutMs: 90_000, intervalMs: 100, message: 'the execution to finish in the storm' },
        );
      } finally {
        clearInterval(storm);
        await Promise.all(calls);
      }
      t.diagnostic(
        `${rounds} storm rounds in ${Date.now() - stormStarted} ms terminated ${terminated} backends`,
      );
      assert.ok(rounds >= 5, `the storm lasted ${rounds} rounds`);
      assert.ok(terminated >= 5, `the storm terminated ${terminated} backends`);
      const counts = await assertSettled(u.db, executionId, total);
      assert.deepEqual(counts, { COMPLETED: 500 }, withSeed('every file completed'));
      t.diagnostic(await attemptsHistogram(u.db, executionId));
      assertAlive(workers);
    });
  });

  // When the statement that records the outcomes is sent, every byte on the wire starts to take
  // 1.5 s each way. Cut at once, the statement never reaches the server; cut once its result
  // is visible to another connection, the commit has landed while its reply is still on the
  // way back. Either way the retry must leave each outcome applied exactly once.
  for (const cut of ['before the commit reached the server', 'after the commit landed'] as const) {
    test(`a connection cut ${cut} records each outcome once`, async () => {
      const url = await server.createDatabase();
      const u = await open(url);
      const { executionId, total } = await u.submit({
        name: 'commit-cut',
        source: { type: 'local', path: await sourceFolder(3) },
        steps: ['noop'],
        options: { maxAttempts: 3 },
      });
      const claimed = await claimFiles(u.db, 'owner', total, executionId);
      assert.equal(claimed.length, 3);
      const [done, broken, flaky] = claimed as unknown as [HeldFile, HeldFile, HeldFile];
      const outcome = (f: HeldFile, ok: boolean, retryable: boolean): Outcome => ({
        id: f.id,
        attempt: f.attempt,
        ok,
        retryable,
        sha256: null,
        result: ok ? { file: f.id } : null,
        timings: {},
        error: ok ? null : 'failed',
        retryDelaySeconds: 0,
      });
      const outcomes = [outcome(done, true, false), outcome(broken, false, false)];
      outcomes.push(outcome(flaky, false, true));
      const landed = async () => {
        const { rows } = await u.db.query(
          'SELECT 1 FROM unstuck.file_results WHERE file_execution_id = $1',
          [done.id],
        );
        return rows.length > 0;
      };

      const proxy = await FaultProxy.start({ port: server.port });
      try {
        const proxied = testDatabase(proxy.url(url), { poolSize: 1 });
        databases.push(proxied);
        let sent = false;
        proxied.pool.on('connect', (client: pg.PoolClient) => {
          const query = client.query.bind(client) as (...args: unknown[]) => unknown;
          (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args) => {
            if (!sent && typeof args[0] === 'string' && args[0].includes('unstuck.file_results')) {
              sent = true;
              proxy.setLatency(1_500);
            }
            return query(...args);
          };
        });
        const retries = await countFrom(dbMetrics.retries, { class: 'connection' });
        let settled = false;
        const finishing = finishFiles(proxied, 'owner', outcomes).finally(() => (settled = true));
        if (cut === 'after the commit landed') {
          await waitFor(landed, {
            timeoutMs: 10_000,
            intervalMs: 5,
            message: 'the first commit to land',
          });
        } else {
          await waitFor(() => sent, { timeoutMs: 10_000, intervalMs: 1, message: 'the send' });
        }
        assert.equal(settled, false, 'the reply had not reached the client when the wire was cut');
        proxy.cutAll('rst');
        proxy.setLatency(0);
        if (cut === 'before the commit reached the server') {
          assert.equal(await landed(), false, 'nothing had landed');
        }

        const report = await finishing;
        assert.ok((await retries.delta()) >= 1, 'the finish was retried after the cut');
        assert.deepEqual(
          report.recorded.map((f) => f.id).sort(),
          claimed.map((f) => f.id).sort(),
          'all three outcomes reported as recorded',
        );
        assert.deepEqual(report.fencedOff, []);
      } finally {
        await proxy.close();
      }
      const { rows } = await u.db.query<{ id: string; status: string; attempt: number }>(
        `SELECT id::text, status, attempt FROM unstuck.file_executions WHERE execution_id = $1 ORDER BY id`,
        [executionId],
      );
      assert.deepEqual(
        rows.map((r) => [r.id, r.status, r.attempt]),
        [
          [done.id, 'COMPLETED', 1],
          [broken.id, 'ERROR', 1],
          [flaky.id, 'PENDING', 2],
        ],
        'each outcome applied once: the retryable failure moved on by one attempt, not two',
      );
      const summary = await u.status(executionId);
      assert.deepEqual([summary?.completed, summary?.failed], [1, 1], 'counted once');
      const { rows: results } = await u.db.query(
        'SELECT file_execution_id FROM unstuck.file_results WHERE execution_id = $1',
        [executionId],
      );
      assert.equal(results.length, 1, 'exactly one result row');
    });
  }

  test('an immediate server restart in the middle of a 500-file run', async (t) => {
    const url = await server.createDatabase();
    const u = await open(url);
    const { executionId, total } = await submitSleepy(u, 500, 40);
    const workers = [0, 1, 2].map(() => spawnWorker(url));
    await reporting(t, workers, async () => {
      await Promise.all(workers.map((w) => w.id));
      const before = await waitFor(
        async () => {
          const n = await completedCount(u, executionId);
          return n >= 150 ? n : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 20, message: 'a third of the run to complete' },
      );
      assert.ok(before < total, 'restarted before the end');
      await server.restart('immediate');
      const end = await u.wait(executionId, {
        intervalMs: 100,
        signal: AbortSignal.timeout(90_000),
      });
      assert.equal(end.status, 'COMPLETED');
      const counts = await assertSettled(u.db, executionId, total);
      assert.deepEqual(counts, { COMPLETED: 500 }, withSeed('every file completed'));
      t.diagnostic(
        `restarted at ${before} completed; ${await attemptsHistogram(u.db, executionId)}`,
      );
      assert.ok(
        workers.some((w) => /"module":"db"/.test(w.output())),
        'the workers felt the restart (their database layer logged it)',
      );
      assertAlive(workers);
    });
  });
});
