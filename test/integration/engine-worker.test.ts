// The worker through the library API, on real folders and user step modules: retries of a
// throwing step, a hanging step's timeout, cancellation, graceful shutdown, user retry, and the
// files a source cannot process.
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config.js';
import type { Worker } from '../../src/engine/worker.js';
import { Unstuck } from '../../src/unstuck.js';
import type { WorkflowInput } from '../../src/workflow/definition.js';
import { waitFor } from '../harness/db.js';
import { sharedTestServer, type TestServer } from '../harness/server.js';
import { TempFolders } from '../harness/temp-folders.js';

const fixtures = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures/engine');
const fixture = (name: string) => join(fixtures, name);

let server: TestServer;
const temp = new TempFolders({ prefix: 'unstuck-worker-test-' });
const handles: Unstuck[] = [];
const workers: Worker[] = [];

before(async () => {
  server = await sharedTestServer();
});
after(async () => {
  for (const worker of workers) await worker.stop().catch(() => undefined);
  for (const u of handles) await u.close().catch(() => undefined);
  await temp.removeAll();
});

/** A library handle on a fresh database (migrated by open), with fast retries and no logs. */
async function open(): Promise<Unstuck> {
  const config = loadConfig({
    DATABASE_URL: await server.createDatabase(),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    DB_RETRY_BASE_DELAY: '0.02',
    DB_RETRY_MAX_DELAY: '0.5',
    DB_POOL_SIZE: '6',
  });
  const u = await Unstuck.open({ config });
  handles.push(u);
  return u;
}

function startWorker(u: Unstuck, options: Parameters<Unstuck['worker']>[0] = {}): Worker {
  const worker = u.worker({ concurrency: 2, pollIntervalMs: 50, sweepIntervalMs: 200, ...options });
  workers.push(worker);
  worker.start();
  return worker;
}

/** A source folder holding `files` (relative path to content). */
const sourceFolder = (files: Record<string, string | Buffer>) =>
  temp.withFiles(files, 'unstuck-source-');

const textFiles = (names: string[]) =>
  Object.fromEntries(names.map((name) => [name, `the text of ${name}\n`]));

/** Waits for the execution to end, failing the test if it has not within `ms`. */
function finished(u: Unstuck, executionId: string, ms = 20_000) {
  return u.wait(executionId, { intervalMs: 50, signal: AbortSignal.timeout(ms) });
}

async function statuses(u: Unstuck, executionId: string): Promise<Record<string, number>> {
  const { rows } = await u.db.query<{ status: string; n: number }>(
    'SELECT status, count(*)::int AS n FROM unstuck.file_executions WHERE execution_id = $1 GROUP BY status',
    [executionId],
  );
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/** I2 and I3: counters equal the file statuses; one result per COMPLETED file, none otherwise. */
async function assertConsistent(u: Unstuck, executionId: string): Promise<void> {
  const summary = await u.status(executionId);
  assert.ok(summary);
  const counts = await statuses(u, executionId);
  assert.deepEqual(
    {
      total: summary.total,
      completed: summary.completed,
      failed: summary.failed,
      stopped: summary.stopped,
    },
    {
      total: Object.values(counts).reduce((a, b) => a + b, 0),
      completed: counts.COMPLETED ?? 0,
      failed: counts.ERROR ?? 0,
      stopped: counts.STOPPED ?? 0,
    },
    'counters equal a GROUP BY of file statuses',
  );
  const { rows } = await u.db.query(
    `SELECT f.path, f.status, count(r.*)::int AS results
     FROM unstuck.file_executions f LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     WHERE f.execution_id = $1
     GROUP BY f.id HAVING count(r.*) <> CASE WHEN f.status = 'COMPLETED' THEN 1 ELSE 0 END`,
    [executionId],
  );
  assert.deepEqual(rows, [], 'exactly one result per COMPLETED file and none for the others');
}

async function byPath(u: Unstuck, executionId: string) {
  return new Map((await u.files(executionId)).map((f) => [f.path, f]));
}

/** Lines a step fixture appended to its log, as [path, attempt] pairs. */
async function calls(log: string): Promise<[string, number][]> {
  const text = existsSync(log) ? await readFile(log, 'utf8') : '';
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [path, attempt] = line.split(' ');
      return [path!, Number(attempt)];
    });
}

async function gate() {
  const folder = await temp.make('unstuck-gate-');
  const started = join(folder, 'started');
  await mkdir(started);
  const release = join(folder, 'release');
  return {
    options: { started, release, log: join(folder, 'log') },
    /** The files whose step has started, as "path attempt" markers. */
    started: async () => (await readdir(started)).filter((name) => !name.endsWith('.tmp')),
    open: () => writeFile(release, ''),
  };
}

describe('worker', () => {
  test('a throwing step is retried up to maxAttempts, then ERROR with its message; the rest complete', async () => {
    const u = await open();
    const work = await temp.make();
    const log = join(work, 'calls');
    const files = ['a.txt', 'b.txt', 'bad-1.txt', 'c.txt', 'sub/bad-2.txt', 'sub/d.txt'];
    const workflow: WorkflowInput = {
      name: 'throwing',
      source: { type: 'local', path: await sourceFolder(textFiles(files)) },
      steps: [{ use: fixture('flaky.mjs'), options: { fail: 'bad-', log } }],
      options: { maxAttempts: 3, retryDelaySeconds: 0.02, leaseSeconds: 10 },
    };
    const { executionId, total } = await u.submit(workflow);
    assert.equal(total, files.length);
    startWorker(u);
    const summary = await finished(u, executionId);

    assert.equal(summary.status, 'COMPLETED', 'some files completed');
    assert.equal(summary.completed, 4);
    assert.equal(summary.failed, 2);
    const rows = await byPath(u, executionId);
    for (const path of ['bad-1.txt', 'sub/bad-2.txt']) {
      const row = rows.get(path)!;
      assert.equal(row.status, 'ERROR', path);
      assert.equal(row.attempt, 3, `${path} ran its three attempts`);
      assert.equal(row.error, `step "flaky" failed: cannot digest ${path} (attempt 3)`);
      assert.equal(row.result, null);
    }
    for (const path of ['a.txt', 'b.txt', 'c.txt', 'sub/d.txt']) {
      const row = rows.get(path)!;
      assert.equal(row.status, 'COMPLETED', path);
      assert.equal(row.attempt, 1);
      assert.deepEqual(row.result, {
        flaky: { path, attempt: 1, text: `the text of ${path}\n` },
      });
    }
    const seen = await calls(log);
    for (const path of files) {
      const attempts = seen.filter(([p]) => p === path).map(([, a]) => a);
      assert.deepEqual(attempts, path.includes('bad-') ? [1, 2, 3] : [1], `calls of ${path}`);
    }
    await assertConsistent(u, executionId);
  });

  test('a step that hangs times out and ends ERROR within a bounded time', async () => {
    const u = await open();
    const started = Date.now();
    const signal = AbortSignal.timeout(15_000);
    const summary = await u.run(
      {
        name: 'hanging',
        source: {
          type: 'local',
          path: await sourceFolder(textFiles(['hang-1.txt', 'ok-1.txt', 'ok-2.txt'])),
        },
        steps: [{ use: fixture('hang.mjs'), options: { hang: 'hang-' } }],
        options: { maxAttempts: 2, retryDelaySeconds: 0, stepTimeoutSeconds: 0.3, concurrency: 2 },
      },
      { intervalMs: 20, signal },
    );
    const elapsed = Date.now() - started;
    // Dozens of polls later, the caller's signal carries none of wait's listeners.
    assert.equal(getEventListeners(signal, 'abort').length, 0, 'wait removed its listeners');
    assert.equal(summary.status, 'COMPLETED');
    assert.deepEqual([summary.completed, summary.failed], [2, 1]);
    const hung = (await byPath(u, summary.id)).get('hang-1.txt')!;
    assert.equal(hung.status, 'ERROR');
    assert.equal(hung.attempt, 2);
    assert.equal(hung.error, 'step "hang" timed out after 0.3 s');
    // Two timeouts of 0.3 s plus claim polls (run's worker polls every 0.5 s) and start-up.
    assert.ok(elapsed < 8_000, `ended in ${elapsed} ms`);
    await assertConsistent(u, summary.id);
  });

  /** Submits 10 gated files, starts a worker, and stops the execution once two are in their step. */
  async function stoppedMidway(u: Unstuck, g: Awaited<ReturnType<typeof gate>>, output?: string) {
    const names = Array.from({ length: 10 }, (_, i) => `doc-${i}.txt`);
    const { executionId } = await u.submit({
      name: 'cancel',
      source: { type: 'local', path: await sourceFolder(textFiles(names)) },
      steps: [{ use: fixture('gate.mjs'), options: g.options }],
      ...(output && { destination: { outputFolder: output } }),
      options: { leaseSeconds: 10, stepTimeoutSeconds: 60 },
    });
    startWorker(u, { concurrency: 2 });
    await waitFor(async () => (await g.started()).length >= 2, {
      timeoutMs: 10_000,
      message: 'two files to be in their step',
    });
    const summary = await u.stop(executionId);
    return { executionId, summary, running: await g.started() };
  }

  test('stop: PENDING files STOPPED at once, running ones when their step returns, no results', async () => {
    const u = await open();
    const g = await gate();
    const { executionId, summary } = await stoppedMidway(u, g);
    assert.ok(summary);
    assert.equal(summary.stopRequested, true);
    assert.equal(summary.status, 'EXECUTING', 'not final while files still run');
    const atStop = await statuses(u, executionId);
    assert.equal(atStop.PENDING, undefined, 'no PENDING file left');
    assert.ok((atStop.EXECUTING ?? 0) >= 2, 'the running files are still EXECUTING');
    assert.equal(atStop.STOPPED, 10 - atStop.EXECUTING!, 'every file that was PENDING is STOPPED');
    assert.equal(summary.stopped, atStop.STOPPED);
    assert.equal((await u.status(executionId))?.status, 'EXECUTING', 'still waiting for its steps');

    await g.open();
    const end = await finished(u, executionId);
    assert.equal(end.status, 'STOPPED');
    assert.ok(end.finishedAt);
    assert.deepEqual(await statuses(u, executionId), { STOPPED: 10 });
    const { rows } = await u.db.query('SELECT 1 FROM unstuck.file_results');
    assert.equal(rows.length, 0, 'no result for a STOPPED file');
    await assertConsistent(u, executionId);
    assert.equal(await u.retry(executionId), 0, 'a stopped execution is not retried');
  });

  // Files a worker claimed ahead of the stop may still run their step (a known limit: the
  // worker learns of the stop from their outcome), but nothing of theirs is kept.
  test('stop: the output folder gets nothing for STOPPED files', async () => {
    const u = await open();
    const g = await gate();
    const output = await temp.make('unstuck-output-');
    const { executionId } = await stoppedMidway(u, g, output);
    await g.open();
    assert.equal((await finished(u, executionId)).status, 'STOPPED');
    assert.deepEqual(await readdir(output), [], 'no result file for a STOPPED file');
  });

  test('graceful shutdown hands back what runs past the grace; another worker completes it', async () => {
    const u = await open();
    const g = await gate();
    const names = Array.from({ length: 6 }, (_, i) => `doc-${i}.txt`);
    const { executionId } = await u.submit({
      name: 'shutdown',
      source: { type: 'local', path: await sourceFolder(textFiles(names)) },
      steps: [{ use: fixture('gate.mjs'), options: g.options }],
      options: { leaseSeconds: 10, stepTimeoutSeconds: 60 },
    });
    const first = startWorker(u, { concurrency: 2, graceMs: 300 });
    await waitFor(async () => (await g.started()).length >= 2, {
      timeoutMs: 10_000,
      message: 'two files to be in their step',
    });

    const stopping = Date.now();
    await first.stop();
    const stopMs = Date.now() - stopping;
    assert.ok(stopMs < 3_000, `stop returned after the grace, in ${stopMs} ms`);
    const { rows: held } = await u.db.query<{ status: string; attempt: number; owner: string }>(
      `SELECT status, attempt, lease_owner AS owner FROM unstuck.file_executions WHERE execution_id = $1`,
      [executionId],
    );
    assert.deepEqual(
      held.filter((r) => r.status !== 'PENDING'),
      [],
      'nothing left EXECUTING: abandoned files are back to PENDING',
    );
    assert.ok(
      held.every((r) => r.attempt === 1 && r.owner === null),
      'handed back at the same attempt, with no owner',
    );

    // The abandoned steps return now; the stopped worker must drop their outcomes.
    await g.open();
    const second = startWorker(u, { concurrency: 2 });
    const end = await finished(u, executionId);
    assert.equal(end.status, 'COMPLETED');
    assert.equal(end.completed, 6);
    const { rows } = await u.db.query<{ owner: string; attempt: number }>(
      'SELECT lease_owner AS owner, attempt FROM unstuck.file_executions WHERE execution_id = $1',
      [executionId],
    );
    assert.ok(
      rows.every((r) => r.owner === second.id && r.attempt === 1),
      'all completed by the second worker, at attempt 1',
    );
    await assertConsistent(u, executionId);
  });

  test('a workflow the worker cannot load ends its files ERROR with the reason', async () => {
    const u = await open();
    const source = await sourceFolder(textFiles(['a.txt', 'b.txt']));
    const { executionId } = await u.submit({
      name: 'unloadable',
      source: { type: 'local', path: source },
      steps: ['count'],
      options: { leaseSeconds: 1, maxAttempts: 2, retryDelaySeconds: 0 },
    });
    // The source folder is gone by the time a worker resolves the stored workflow.
    await rm(source, { recursive: true, force: true });
    startWorker(u);
    const end = await finished(u, executionId);
    assert.equal(end.status, 'ERROR');
    for (const file of await u.files(executionId)) {
      assert.match(file.error ?? '', /does not exist/, `${file.path}: the real reason`);
    }
  });

  test('retry gives ERROR files a new attempt and they complete', async () => {
    const u = await open();
    const work = await temp.make();
    const log = join(work, 'calls');
    const healed = join(work, 'healed');
    const files = ['a.txt', 'bad-1.txt', 'b.txt', 'bad-2.txt'];
    const { executionId } = await u.submit({
      name: 'retry',
      source: { type: 'local', path: await sourceFolder(textFiles(files)) },
      steps: [{ use: fixture('flaky.mjs'), options: { fail: 'bad-', log, healed } }],
      options: { maxAttempts: 2, retryDelaySeconds: 0.02 },
    });
    startWorker(u);
    const first = await finished(u, executionId);
    assert.deepEqual([first.status, first.completed, first.failed], ['COMPLETED', 2, 2]);

    await writeFile(healed, '');
    assert.equal(await u.retry(executionId), 2, 'both ERROR files retried');
    const retried = await u.status(executionId);
    assert.deepEqual(
      [retried?.status, retried?.failed, retried?.finishedAt],
      ['EXECUTING', 0, null],
    );
    const end = await finished(u, executionId);
    assert.deepEqual([end.status, end.completed, end.failed], ['COMPLETED', 4, 0]);
    assert.ok(end.finishedAt);
    const rows = await byPath(u, executionId);
    for (const path of ['bad-1.txt', 'bad-2.txt']) {
      const row = rows.get(path)!;
      assert.equal(row.status, 'COMPLETED');
      assert.equal(row.attempt, 3, 'the retry is a new attempt');
      assert.equal(row.error, null);
      assert.deepEqual(row.result, { flaky: { path, attempt: 3, text: `the text of ${path}\n` } });
    }
    const seen = await calls(log);
    assert.deepEqual(
      seen.filter(([p]) => p === 'bad-1.txt').map(([, a]) => a),
      [1, 2, 3],
    );
    assert.deepEqual(
      seen.filter(([p]) => p === 'a.txt').map(([, a]) => a),
      [1],
      'completed files are not run again',
    );
    assert.equal(await u.retry(executionId), 0, 'nothing left to retry');
    await assertConsistent(u, executionId);
  });

  test('unreadable, oversized, binary and escaping files end ERROR with reasons; the others complete', async () => {
    const u = await open();
    const outside = await sourceFolder({ 'secret.txt': 'not yours\n' });
    const png = Buffer.from(
      'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
      'base64',
    );
    const source = await sourceFolder({
      'good.txt': 'good text\n',
      'notes/readme.md': '# readme\n',
      'deleted.txt': 'here at listing time\n',
      'big.txt': 'x'.repeat(5000),
      'image.png': png,
    });
    await symlink(join(source, 'nowhere.txt'), join(source, 'dangling.txt'));
    await symlink(join(outside, 'secret.txt'), join(source, 'escape.txt'));
    await symlink(join(source, 'good.txt'), join(source, 'alias.txt'));
    const output = await temp.make('unstuck-output-');
    const { executionId, total } = await u.submit({
      name: 'problems',
      source: { type: 'local', path: source, maxFileSize: 1000 },
      steps: ['decode-text', 'count'],
      destination: { outputFolder: output },
      options: { maxAttempts: 3, retryDelaySeconds: 0.02 },
    });
    assert.equal(total, 8);
    // Deleted after the listing recorded it, before any worker read it.
    await unlink(join(source, 'deleted.txt'));
    startWorker(u);
    const end = await finished(u, executionId);

    const rows = await byPath(u, executionId);
    const errors = Object.fromEntries(
      [...rows.values()].filter((r) => r.status === 'ERROR').map((r) => [r.path, r.error]),
    );
    assert.deepEqual(errors, {
      'big.txt': 'file is 5000 bytes, over the limit of 1000',
      'dangling.txt': 'dangling symlink: its target does not exist',
      'deleted.txt': 'file not found',
      'escape.txt': 'symlink leads outside the source folder',
      'image.png': 'step "decode-text" failed: binary file, not text',
    });
    for (const path of Object.keys(errors)) {
      assert.equal(rows.get(path)!.attempt, 1, `${path}: no retry can fix it`);
    }
    const completed = [...rows.values()].filter((r) => r.status === 'COMPLETED');
    assert.deepEqual(completed.map((r) => r.path).sort(), [
      'alias.txt',
      'good.txt',
      'notes/readme.md',
    ]);
    assert.deepEqual([end.status, end.completed, end.failed], ['COMPLETED', 3, 5]);
    await assertConsistent(u, executionId);

    // One JSON per completed file, holding what the database holds, and nothing else.
    const written = (await readdir(output, { recursive: true, withFileTypes: true }))
      .filter((d) => d.isFile())
      .map((d) => relative(output, join(d.parentPath, d.name)))
      .sort();
    assert.deepEqual(written, ['alias.txt.json', 'good.txt.json', 'notes/readme.md.json']);
    for (const row of completed) {
      const json = JSON.parse(await readFile(join(output, `${row.path}.json`), 'utf8')) as unknown;
      assert.deepEqual(json, row.result, `${row.path}.json matches the stored result`);
    }
  });
});
