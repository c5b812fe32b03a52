// Defects the chaos matrix found, each pinned down by a focused test against a real PostgreSQL.
//
// A crash (pg_ctl stop -m immediate) can lose a claim: claims commit asynchronously, so the row
// goes back to PENDING at the same attempt while its worker still runs the file. When the same
// worker claims it again it holds one (file, attempt) twice; its two outcomes could then land in
// one finishFiles batch, whose INSERT of results met the primary key twice and failed the whole
// batch (every other outcome in it was lost and run again). Seen in `npm run chaos` as
// "23505 duplicate key value violates unique constraint file_results_pkey" (restart-and-kill).
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config.js';
import type pg from 'pg';
import type { Database } from '../../src/db/database.js';
import { migrate } from '../../src/db/migrate.js';
import { organizationScope, submitExecution } from '../../src/engine/executions.js';
import { claimFiles, finishFiles, type HeldFile, type Outcome } from '../../src/engine/queue.js';
import { sweep } from '../../src/engine/recovery.js';
import { Worker } from '../../src/engine/worker.js';
import { Unstuck } from '../../src/unstuck.js';
import { parseWorkflow, resolveWorkflow } from '../../src/workflow/definition.js';
import { testDatabase, testLog, waitFor } from '../harness/db.js';
import { seedExecution } from '../harness/seed-execution.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { sharedTestServer, type TestServer } from '../harness/server.js';

const gateStep = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/engine/gate.mjs');

let server: TestServer;
const closers: (() => Promise<unknown>)[] = [];

before(async () => {
  server = await sharedTestServer();
});
after(async () => {
  for (const close of closers.reverse()) await close().catch(() => undefined);
});

async function freshDatabase(): Promise<Database> {
  const db = testDatabase(await server.createDatabase());
  closers.push(() => db.close());
  await migrate(db);
  return db;
}

function ok(file: HeldFile, result: unknown): Outcome {
  return {
    id: file.id,
    attempt: file.attempt,
    ok: true,
    retryable: false,
    sha256: null,
    result,
    timings: {},
    error: null,
    retryDelaySeconds: 0,
  };
}

/** What the claim's lost commit leaves behind: the row as it was before the claim. */
async function loseClaim(db: Database, id: string): Promise<void> {
  await db.query(
    `UPDATE unstuck.file_executions
     SET status = 'PENDING', lease_owner = NULL, lease_expires_at = NULL, started_at = NULL
     WHERE id = $1 AND status = 'EXECUTING'`,
    [id],
  );
}

async function results(db: Database, executionId: string) {
  const { rows } = await db.query<{ id: string; status: string; result: unknown; n: number }>(
    `SELECT f.id::text, f.status, min(r.result::text)::jsonb AS result, count(r.*)::int AS n
     FROM unstuck.file_executions f LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     WHERE f.execution_id = $1 GROUP BY f.id ORDER BY f.id`,
    [executionId],
  );
  return rows;
}

describe('finishFiles with one file twice in a batch', () => {
  test('the same (file, attempt) twice: recorded once, and the rest of the batch with it', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 3, maxAttempts: 5 });
    const [a, b, c] = await claimFiles(db, 'w', 3, executionId);
    assert.ok(a && b && c);
    const report = await finishFiles(db, 'w', [
      ok(a, { run: 1 }),
      ok(b, { run: 1 }),
      ok(a, { run: 2 }),
      ok(c, { run: 1 }),
    ]);
    assert.deepEqual(new Set(report.recorded.map((f) => f.id)), new Set([a.id, b.id, c.id]));
    assert.deepEqual(report.fencedOff, []);
    const rows = await results(db, executionId);
    assert.deepEqual(
      rows.map((r) => [r.status, r.n]),
      [
        ['COMPLETED', 1],
        ['COMPLETED', 1],
        ['COMPLETED', 1],
      ],
    );
    const { rows: e } = await db.query<{ status: string; completed: number }>(
      'SELECT status, completed FROM unstuck.workflow_executions WHERE id = $1',
      [executionId],
    );
    assert.deepEqual(e[0], { status: 'COMPLETED', completed: 3 });
  });

  test('two attempts of one file: only the attempt that holds the file is recorded', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 1, maxAttempts: 5 });
    const [first] = await claimFiles(db, 'w', 1, executionId);
    assert.ok(first);
    // The lease expires, a sweep gives the file attempt 2, and the same worker claims it again.
    await db.query(
      `UPDATE unstuck.file_executions SET lease_expires_at = now() - interval '1 second' WHERE id = $1`,
      [first.id],
    );
    await sweep(db);
    const [second] = await claimFiles(db, 'w', 1, executionId);
    assert.equal(second?.attempt, 2);
    // (The report cannot tell which of the two landed: both read back as this owner's.)
    await finishFiles(db, 'w', [ok(first, { attempt: 1 }), ok(second, { attempt: 2 })]);
    const [row] = await results(db, executionId);
    assert.deepEqual(row?.result, { attempt: 2 }, 'the result of the attempt that finished it');
    assert.equal(row?.n, 1);
  });
});

describe('a worker that claims again a file it is still running', () => {
  test('runs it once, and records its outcome', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'unstuck-chaos-finding-'));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    const source = join(dir, 'source');
    const started = join(dir, 'started');
    const release = join(dir, 'release');
    const calls = join(dir, 'calls.log');
    for (const d of [source, started]) await mkdir(d);
    await writeFile(join(source, 'only.txt'), 'one file\n');
    await writeFile(calls, '');
    const config = loadConfig({
      DATABASE_URL: await server.createDatabase(),
      LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
      DB_RETRY_BASE_DELAY: '0.02',
      DB_RETRY_MAX_DELAY: '0.5',
    });
    const u = await Unstuck.open({ config });
    closers.push(() => u.close());
    const { executionId } = await u.submit({
      name: 'reclaim',
      source: { type: 'local', path: source },
      steps: [{ use: gateStep, options: { started, release, log: calls } }],
      // A long lease: no heartbeat or sweep gets between the lost claim and the new one.
      options: { leaseSeconds: 60, maxAttempts: 3 },
    });
    const worker = u.worker({ concurrency: 2, pollIntervalMs: 20 });
    closers.push(() => worker.stop());
    worker.start();
    await waitFor(async () => (await readdir(started)).length === 1, {
      message: 'the step to start',
    });
    const [file] = await u.files(executionId);
    assert.ok(file);
    await loseClaim(u.db, file.id);
    await waitFor(
      async () => {
        const { rows } = await u.db.query<{ owner: string | null }>(
          'SELECT lease_owner AS owner FROM unstuck.file_executions WHERE id = $1',
          [file.id],
        );
        return rows[0]?.owner === worker.id;
      },
      { message: 'the worker to claim the file again' },
    );
    await writeFile(release, '');
    // Bounded: before the fix the batch failed and the file waited out its 60 s lease.
    const summary = await u.wait(executionId, {
      intervalMs: 20,
      signal: AbortSignal.timeout(20_000),
    });
    assert.equal(summary.status, 'COMPLETED');
    const lines = (await readFile(calls, 'utf8')).trim().split('\n');
    assert.equal(lines.length, 1, `the step ran once, not: ${lines.join(' / ')}`);
    const [done] = await u.files(executionId);
    assert.equal(done?.attempt, 1, 'no new attempt was needed');
  });
});

// A submission whose COMMIT landed but whose reply was lost was run again whole by the retry,
// and made a second execution of the same files: every file processed twice.
describe('a submission whose commit reply is lost', () => {
  test('makes one execution, not two', async () => {
    const url = await server.createDatabase();
    const direct = testDatabase(url);
    closers.push(() => direct.close());
    await migrate(direct);
    const dir = await mkdtemp(join(tmpdir(), 'unstuck-chaos-submit-'));
    closers.push(() => rm(dir, { recursive: true, force: true }));
    for (const name of ['a.txt', 'b.txt']) await writeFile(join(dir, name), name);
    const workflow = await resolveWorkflow(
      parseWorkflow({
        name: 'submit-once',
        source: { type: 'local', path: dir },
        steps: ['count'],
      }),
      dir,
    );
    const proxy = await FaultProxy.start({ port: server.port });
    closers.push(() => proxy.close());
    const proxied = testDatabase(proxy.url(url), { poolSize: 1 });
    closers.push(() => proxied.close());
    // From the COMMIT on, every byte takes 1.5 s each way: time to see it land, then cut.
    let committing = false;
    proxied.pool.on('connect', (client: pg.PoolClient) => {
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args) => {
        if (!committing && args[0] === 'COMMIT') {
          committing = true;
          proxy.setLatency(1_500);
        }
        return query(...args);
      };
    });
    const executions = async () => {
      const { rows } = await direct.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM unstuck.workflow_executions',
      );
      return rows[0]!.n;
    };
    const scope = await organizationScope(direct);
    let settled = false;
    const submitting = submitExecution(proxied, scope, workflow).finally(() => (settled = true));
    await waitFor(async () => (await executions()) > 0, {
      timeoutMs: 15_000,
      intervalMs: 5,
      message: 'the first commit to land',
    });
    assert.equal(settled, false, 'the reply had not reached the client when the wire was cut');
    proxy.cutAll('rst');
    proxy.setLatency(0);
    const { executionId, total } = await submitting;
    assert.equal(total, 2);
    assert.equal(await executions(), 1, 'the retry found the execution its first try made');
    const { rows } = await direct.query<{ id: string; files: number }>(
      `SELECT e.id::text, count(f.id)::int AS files FROM unstuck.workflow_executions e
       LEFT JOIN unstuck.file_executions f ON f.execution_id = e.id GROUP BY e.id`,
    );
    assert.deepEqual(rows, [{ id: executionId, files: 2 }]);
  });
});

// A worker's stop() returned while a sweep (or heartbeat) it had started was still running, so
// `unstuck worker` closed the pool under it: "Cannot use a pool after calling end on the pool",
// logged by a worker that had just logged "worker stopped" (chaos: server-down-10s, at the end).
describe('a worker stopping while its sweep runs', () => {
  test('waits for the sweep before it reports stopped, so closing the pool breaks nothing', async () => {
    const db = testDatabase(await server.createDatabase());
    await migrate(db);
    // The same database, with sweeps that take 300 ms to get going (a slow server, a backoff).
    let sweeping: Promise<unknown> | undefined;
    const slow = Object.create(db) as Database;
    slow.transaction = (fn, options) => {
      if (options?.name !== 'recovery sweep') return db.transaction(fn, options);
      sweeping ??= (async () => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        return db.transaction(fn, options);
      })();
      return sweeping as never;
    };
    const worker = new Worker(slow, {
      concurrency: 1,
      sweepIntervalMs: 10,
      pollIntervalMs: 20,
      log: testLog,
    });
    worker.start();
    await waitFor(() => sweeping !== undefined, { message: 'a sweep to start' });
    await worker.stop();
    await db.close();
    await assert.doesNotReject(sweeping!, 'the sweep ended before the pool was closed');
  });
});
