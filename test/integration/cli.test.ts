// The command line as a user meets it: real `unstuck` processes against a real test server (via
// DATABASE_URL) and, once, against the embedded default, checking what they print, their exit
// codes and what they leave in the database.
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { configReference, loadConfig } from '../../src/config.js';
import { embeddedServerFor } from '../../src/db/embedded-default.js';
import { packageRoot } from '../../src/paths.js';
import {
  assertExit,
  cli,
  type CliOptions,
  killRunningClis,
  shown,
  spawnCli,
} from '../harness/cli.js';
import { waitFor } from '../harness/db.js';
import { eachLimited } from '../harness/each-limited.js';
import { freePort } from '../harness/free-port.js';
import { sharedTestServer, type TestServer } from '../harness/server.js';
import { TempFolders } from '../harness/temp-folders.js';

// ---- running the CLI -------------------------------------------------------------------------

/** Runs the command, expects exit 0 and returns its stdout parsed as JSON. */
async function json<T>(args: string[], options?: CliOptions): Promise<T> {
  const r = await cli([...args, '--json'], options);
  assertExit(r, 0, `unstuck ${args.join(' ')} --json`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    assert.fail(`stdout of unstuck ${args.join(' ')} --json is not JSON: ${shown(r)}`);
  }
}

interface Summary {
  id: string;
  workflow: string;
  status: string;
  total: number;
  completed: number;
  failed: number;
  stopped: number;
}

interface FileRow {
  id: string;
  path: string;
  status: string;
  attempt: number;
  error: string | null;
  result: Record<string, unknown> | null;
}

const terminal = ['COMPLETED', 'ERROR', 'STOPPED'];

// ---- fixtures --------------------------------------------------------------------------------

const fixture = (name: string) => join(packageRoot, 'test', 'fixtures', 'engine', name);

let server: TestServer;
const temp = new TempFolders({ prefix: 'unstuck-cli-test-', serverReadable: true });
const cleanups: (() => Promise<unknown>)[] = [];

before(async () => {
  server = await sharedTestServer();
});

after(async () => {
  killRunningClis();
  for (const cleanup of cleanups) await cleanup().catch(() => undefined);
  await temp.removeAll();
});

const sourceFolder = (files: Record<string, string | Buffer>) =>
  temp.withFiles(files, 'unstuck-cli-source-');

async function workflowFile(dir: string, definition: unknown): Promise<string> {
  const file = join(dir, 'workflow.json');
  await writeFile(file, JSON.stringify(definition, null, 2));
  return file;
}

/** Polls `status <id> --json` until the execution is COMPLETED, ERROR or STOPPED. */
function terminalStatus(id: string, options: CliOptions, accept = (_s: Summary) => true) {
  return waitFor(
    async () => {
      const summary = await json<Summary>(['status', id], options);
      return terminal.includes(summary.status) && accept(summary) ? summary : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 200, message: `execution ${id} to end` },
  );
}

// ---- help ------------------------------------------------------------------------------------

describe('--help', { timeout: 120_000 }, () => {
  test('every command’s --help mentions its options, and needs no database', async () => {
    const expected: { command: string[]; mentions: string[]; options: string[] }[] = [
      {
        command: [],
        mentions: [
          ...['run', 'submit', 'worker', 'status', 'files', 'stop', 'retry', 'migrate', 'db'],
          ...configReference.map((c) => c.env),
          'Exit codes: 0 done, 1 failure, 2 bad input',
          '130 interrupted',
        ],
        options: ['--version'],
      },
      {
        command: ['run'],
        mentions: ['[folder]'],
        options: [
          '--steps',
          '--workflow',
          '--output',
          '--include',
          '--exclude',
          '--json',
          '--workers',
        ],
      },
      {
        command: ['submit'],
        mentions: ['[folder]'],
        options: ['--steps', '--workflow', '--output', '--include', '--exclude', '--json'],
      },
      { command: ['worker'], mentions: ['SIGTERM'], options: ['--concurrency'] },
      { command: ['status'], mentions: ['[execution-id]'], options: ['--json'] },
      {
        command: ['files'],
        mentions: ['<execution-id>', 'ERROR'],
        options: ['--status', '--json'],
      },
      { command: ['stop'], mentions: ['<execution-id>'], options: ['--json'] },
      { command: ['retry'], mentions: ['<execution-id>'], options: ['--json'] },
      { command: ['demo'], mentions: [], options: [] },
      { command: ['migrate'], mentions: [], options: ['--json'] },
      { command: ['db'], mentions: ['start', 'stop', 'status'], options: [] },
      { command: ['db', 'start'], mentions: [], options: [] },
      { command: ['db', 'stop'], mentions: [], options: [] },
      { command: ['db', 'status'], mentions: [], options: ['--json'] },
    ];
    const failures: string[] = [];
    await eachLimited(expected, 4, async ({ command, mentions, options }) => {
      // A database that is not there: --help must not need one.
      const r = await cli([...command, '--help'], {
        env: { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' },
        timeoutMs: 30_000,
      });
      const what = `unstuck ${[...command, '--help'].join(' ')}`;
      if (r.code !== 0) return void failures.push(`${what}: ${shown(r)}`);
      const missing = [...mentions, ...options].filter((m) => !r.stdout.includes(m));
      if (missing.length > 0) failures.push(`${what} does not mention ${missing.join(', ')}`);
      // And no option that is not expected here (so the list above is the whole truth).
      const section = r.stdout.split(/^Options:$/m)[1]?.split(/^\S/m)[0] ?? '';
      const listed = [...section.matchAll(/^\s+(?:-\w, )?(--[\w-]+)/gm)].map((m) => m[1]!);
      const extra = listed.filter((o) => o !== '--help' && !options.includes(o));
      if (extra.length > 0) failures.push(`${what} lists unexpected options ${extra.join(', ')}`);
    });
    assert.deepEqual(failures, [], failures.join('\n'));
  });

  test('--version prints the package version', async () => {
    const r = await cli(['--version']);
    assertExit(r, 0, '--version');
    assert.match(r.stdout, /^\d+\.\d+\.\d+/);
  });
});

// ---- against a server named by DATABASE_URL --------------------------------------------------

describe('with DATABASE_URL', { timeout: 150_000 }, () => {
  test('run <folder> prints the summary and exits 0; --include and --json', async () => {
    const env = { env: { DATABASE_URL: await server.createDatabase() } };
    const folder = await sourceFolder({
      'a.txt': 'hello world\nsecond line\n',
      'sub/b.txt': 'more text in a subfolder',
      'notes.md': '# notes\n\nsome words\n',
      'data.bin': Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0, 0, 0x0d, 0xff, 0x00, 0x01, 0x02]),
    });
    // Over the default maxFileSize (100 MiB), without writing it: a sparse file.
    await writeFile(join(folder, 'huge.log'), '');
    await truncate(join(folder, 'huge.log'), 101 * 1024 * 1024);

    const r = await cli(['run', folder], env);
    assertExit(r, 0, 'run');
    const line =
      /^execution (\d+) \((.+)\) COMPLETED: 3 completed, 2 failed, 0 stopped of 5 files/m;
    assert.match(r.stdout, line, shown(r));
    assert.match(r.stdout, /^ {2}ERROR data\.bin: .*binary/m, shown(r));
    assert.match(r.stdout, /^ {2}ERROR huge\.log: file is 105906176 bytes, over the limit/m);
    const id = line.exec(r.stdout)![1]!;

    const included = await cli(['run', folder, '--include', '**/*.txt'], env);
    assertExit(included, 0, 'run --include');
    assert.match(included.stdout, /COMPLETED: 2 completed, 0 failed, 0 stopped of 2 files/);

    const output = join(await temp.make(), 'results');
    const summary = await json<Summary & { failedFiles: { path: string; error: string }[] }>(
      ['run', folder, '--exclude', 'sub/**', '--output', output],
      env,
    );
    assert.equal(summary.status, 'COMPLETED');
    assert.deepEqual(
      [summary.total, summary.completed, summary.failed, summary.stopped],
      [4, 2, 2, 0],
    );
    assert.deepEqual(summary.failedFiles.map((f) => f.path).sort(), ['data.bin', 'huge.log']);
    for (const f of summary.failedFiles) assert.ok(f.error, `${f.path} has a reason`);
    assert.deepEqual(readdirSync(output).sort(), ['a.txt.json', 'notes.md.json']);

    // The first run's files, as the files command sees them.
    const rows = await json<FileRow[]>(['files', id], env);
    assert.deepEqual(
      rows.map((f) => [f.path, f.status]),
      [
        ['a.txt', 'COMPLETED'],
        ['data.bin', 'ERROR'],
        ['huge.log', 'ERROR'],
        ['notes.md', 'COMPLETED'],
        ['sub/b.txt', 'COMPLETED'],
      ],
    );
    const a = rows.find((f) => f.path === 'a.txt')!;
    assert.deepEqual(a.result?.count, { lines: 2, words: 4, chars: 24 });
  });

  test('submit --json, a worker, status, files --status ERROR, retry', async () => {
    const env = { env: { DATABASE_URL: await server.createDatabase() } };
    const folder = await sourceFolder({
      'ok-1.txt': 'one',
      'ok-2.txt': 'two',
      'fail-1.txt': 'three',
      'fail-2.txt': 'four',
    });
    const dir = await temp.make();
    const healed = join(dir, 'healed');
    const wf = await workflowFile(dir, {
      name: 'flaky',
      source: { type: 'local', path: folder },
      steps: [
        { use: fixture('flaky.mjs'), options: { log: join(dir, 'log'), fail: 'fail-', healed } },
      ],
      options: { maxAttempts: 1, concurrency: 2 },
    });

    const submitted = await cli(['submit', '--workflow', wf, '--json'], env);
    assertExit(submitted, 0, 'submit');
    const parsed = JSON.parse(submitted.stdout) as { executionId: string };
    assert.deepEqual(Object.keys(parsed), ['executionId']);
    const id = parsed.executionId;
    assert.match(id, /^\d+$/);
    const pending = await json<Summary>(['status', id], env);
    assert.deepEqual([pending.status, pending.total, pending.completed], ['PENDING', 4, 0]);

    const worker = spawnCli(['worker', '--concurrency', '2'], { ...env, timeoutMs: 120_000 });
    try {
      const first = await terminalStatus(id, env);
      assert.deepEqual(
        [first.status, first.completed, first.failed, first.stopped],
        ['COMPLETED', 2, 2, 0],
      );
      const errors = await json<FileRow[]>(['files', id, '--status', 'ERROR'], env);
      assert.deepEqual(errors.map((f) => f.path).sort(), ['fail-1.txt', 'fail-2.txt']);
      for (const f of errors) {
        assert.equal(f.status, 'ERROR');
        assert.match(f.error ?? '', new RegExp(`cannot digest ${f.path} \\(attempt 1\\)`));
      }

      await writeFile(healed, '');
      const retried = await json<{ executionId: string; retried: number }>(['retry', id], env);
      assert.deepEqual(retried, { executionId: id, retried: 2 });
      const second = await terminalStatus(id, env, (s) => s.completed === 4);
      assert.deepEqual([second.status, second.failed], ['COMPLETED', 0]);
    } finally {
      worker.child.kill('SIGTERM');
    }
    const stopped = await worker.result;
    assertExit(stopped, 0, 'worker after SIGTERM');
    assert.match(stopped.stderr, /SIGTERM: finishing running files/);

    const rows = await json<FileRow[]>(['files', id], env);
    assert.equal(rows.length, 4);
    for (const f of rows) {
      assert.equal(f.status, 'COMPLETED', JSON.stringify(f));
      assert.equal((f.result?.flaky as { path?: string } | undefined)?.path, f.path);
    }
    assert.deepEqual(rows.map((f) => [f.path, f.attempt]).sort(), [
      ['fail-1.txt', 2],
      ['fail-2.txt', 2],
      ['ok-1.txt', 1],
      ['ok-2.txt', 1],
    ]);

    const listing = await cli(['status'], env);
    assertExit(listing, 0, 'status');
    assert.match(listing.stdout, /^id\s+workflow\s+status\s+total\s+completed\s+failed/m);
    assert.match(
      listing.stdout,
      new RegExp(`^${id}\\s+flaky\\s+COMPLETED\\s+4\\s+4\\s+0\\s+0`, 'm'),
    );
  });

  test('stop: pending files are STOPPED at once; retry then has nothing to do', async () => {
    const env = { env: { DATABASE_URL: await server.createDatabase() } };
    const folder = await sourceFolder({ 'a.txt': 'a', 'b.txt': 'b', 'c.txt': 'c' });
    const { executionId: id } = await json<{ executionId: string }>(['submit', folder], env);
    const r = await cli(['stop', id], env);
    assertExit(r, 0, 'stop');
    assert.match(r.stdout, /STOPPED: 0 completed, 0 failed, 3 stopped of 3 files/);
    const rows = await json<FileRow[]>(['files', id], env);
    assert.deepEqual(
      rows.map((f) => f.status),
      ['STOPPED', 'STOPPED', 'STOPPED'],
    );
    const retry = await cli(['retry', id], env);
    assertExit(retry, 0, 'retry after stop');
    assert.match(retry.stdout, new RegExp(`execution ${id}: 0 files back to PENDING`));
  });

  test('an execution that does not exist exits 4', async () => {
    const env = { env: { DATABASE_URL: await server.createDatabase() } };
    const cases = [
      ['status', '999999'],
      ['status', '999999', '--json'],
      ['files', '999999'],
      ['stop', '999999'],
      ['retry', '999999'],
      ['status', 'abc'],
      ['files', '123456789012345678901234567890'],
    ];
    const failures: string[] = [];
    await eachLimited(cases, 4, async (args) => {
      const r = await cli(args, { ...env, timeoutMs: 30_000 });
      if (r.code !== 4 || !/unstuck: execution \S+ does not exist/.test(r.stderr)) {
        failures.push(`unstuck ${args.join(' ')}: ${shown(r)}`);
      }
    });
    assert.deepEqual(failures, [], failures.join('\n\n'));
  });

  test('migrate applies the schema once, then reports it up to date', async () => {
    const env = { env: { DATABASE_URL: await server.createDatabase() } };
    const first = await cli(['migrate'], env);
    assertExit(first, 0, 'first migrate');
    assert.match(first.stdout, /^applied 1 \S+.*; schema at version \d+$/m);
    const second = await cli(['migrate'], env);
    assertExit(second, 0, 'second migrate');
    assert.match(second.stdout, /^schema is up to date at version \d+$/m);
    const again = await json<{ applied: number[]; version: number }>(['migrate'], env);
    assert.deepEqual(again.applied, []);
  });
});

// ---- the embedded default --------------------------------------------------------------------

describe('the embedded default (no DATABASE_URL)', { timeout: 180_000 }, () => {
  test('db status/start/stop, and SIGINT to a run that started the server', async () => {
    const home = await temp.make('unstuck-cli-embedded-');
    const dataDir = join(home, 'data');
    const port = String(await freePort());
    const env = { DATABASE_URL: undefined, UNSTUCK_DATA_DIR: dataDir, UNSTUCK_PG_PORT: port };
    const opts = { env, cwd: home, timeoutMs: 90_000 };
    cleanups.push(() =>
      embeddedServerFor(loadConfig({ UNSTUCK_DATA_DIR: dataDir, UNSTUCK_PG_PORT: port })).stop(
        'immediate',
      ),
    );
    const dbStatus = () => json<{ running: boolean; port?: number }>(['db', 'status'], opts);

    const before = await cli(['db', 'status'], opts);
    assertExit(before, 0, 'db status before anything');
    assert.match(before.stdout, /embedded PostgreSQL not running; data in .*data[/\\]pg/);

    // A run with a step that holds each file until released, interrupted with files mid-step.
    const files = Object.fromEntries(
      Array.from({ length: 8 }, (_, i) => [`doc-${i}.txt`, `text ${i}`]),
    );
    const folder = await sourceFolder(files);
    const started = join(home, 'started');
    await mkdir(started);
    const release = join(home, 'release');
    const wf = await workflowFile(home, {
      name: 'held',
      source: { type: 'local', path: folder },
      steps: [{ use: fixture('gate.mjs'), options: { started, release } }],
      options: { concurrency: 2 },
    });
    const run = spawnCli(['run', '--workflow', wf], opts);
    await waitFor(() => readdirSync(started).length >= 1 || run.child.exitCode !== null, {
      timeoutMs: 60_000,
      message: 'a file to be mid-step',
    });
    assert.equal(run.child.exitCode, null, `the run is still going: ${run.stderr()}`);
    const id = /execution (\d+): 8 files/.exec(run.stderr())?.[1];
    assert.ok(id, `the run named its execution: ${run.stderr()}`);
    run.child.kill('SIGINT');
    await waitFor(() => run.stderr().includes('SIGINT: finishing running files'), {
      timeoutMs: 30_000,
      message: 'the run to take the signal',
    });
    // The steps running now may finish; nothing new starts.
    await writeFile(release, '');
    const interrupted = await run.result;
    assertExit(interrupted, 130, 'run after SIGINT');
    assert.match(interrupted.stderr, /interrupted: the execution goes on when a worker runs/);
    assert.ok(!existsSync(join(home, '.unstuck')), 'the data went to UNSTUCK_DATA_DIR');
    assert.equal((await dbStatus()).running, false, 'the run stopped the server it started');

    // db start leaves the server running for later commands, which reuse it.
    const start = await cli(['db', 'start'], opts);
    assertExit(start, 0, 'db start');
    assert.match(
      start.stdout,
      new RegExp(`embedded PostgreSQL started on 127\\.0\\.0\\.1:${port}`),
    );
    const up = await dbStatus();
    assert.deepEqual([up.running, up.port], [true, Number(port)]);
    const again = await cli(['db', 'start'], opts);
    assertExit(again, 0, 'db start again');
    assert.match(again.stdout, /already running/);

    const listing = await cli(['status'], opts);
    assertExit(listing, 0, 'status on the running server');
    assert.match(listing.stdout, new RegExp(`^${id}\\s+held\\s+EXECUTING\\s+8\\s`, 'm'));
    const rows = await json<FileRow[]>(['files', id], opts);
    assert.equal(rows.length, 8);
    const byStatus = (s: string) => rows.filter((f) => f.status === s).length;
    assert.equal(byStatus('EXECUTING'), 0, `no file left EXECUTING: ${JSON.stringify(rows)}`);
    assert.equal(byStatus('COMPLETED') + byStatus('PENDING'), 8, JSON.stringify(rows));
    assert.ok(byStatus('PENDING') >= 1, 'files not started were handed back to PENDING');
    const summary = await json<Summary>(['status', id], opts);
    assert.equal(summary.completed, byStatus('COMPLETED'));
    assert.equal((await dbStatus()).running, true, 'commands leave a server they did not start');

    const stop = await cli(['db', 'stop'], opts);
    assertExit(stop, 0, 'db stop');
    assert.match(stop.stdout, /^embedded PostgreSQL stopped$/m);
    assert.equal((await dbStatus()).running, false);
    const stopAgain = await cli(['db', 'stop'], opts);
    assertExit(stopAgain, 0, 'db stop again');
    assert.match(stopAgain.stdout, /was not running/);
  });
});
