// Bad input as a user meets it, through real `unstuck` processes: bad configuration, broken
// workflow files, databases that cannot be used, a submit cut off mid-listing, and file names
// a folder should not have. Each must end with a clear error naming the cause (or, for bad
// files, an ERROR with a reason) within a bounded time, and leave nothing half-written.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { configReference } from '../../src/config.js';
import { waitFor } from '../harness/db.js';
import {
  assertExit,
  cli,
  type CliResult,
  killRunningClis,
  shown,
  spawnCli,
} from '../harness/cli.js';
import { eachLimited } from '../harness/each-limited.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { freePort } from '../harness/free-port.js';
import { sharedTestServer, startTestServer, type TestServer } from '../harness/server.js';
import { TempFolders } from '../harness/temp-folders.js';

// ---- running the CLI -------------------------------------------------------------------------

/** The "unstuck: ..." lines the CLI prints for a failure (logs are JSON lines on stderr). */
const failureText = (r: CliResult) =>
  r.stderr
    .split('\n')
    .filter((line) => !line.startsWith('{'))
    .join('\n');

// ---- fixtures --------------------------------------------------------------------------------

let server: TestServer;
const temp = new TempFolders({ prefix: 'unstuck-bad-input-', serverReadable: true });
const proxies: FaultProxy[] = [];

before(async () => {
  server = await sharedTestServer();
});

after(async () => {
  killRunningClis();
  for (const proxy of proxies) await proxy.close().catch(() => undefined);
  await temp.removeAll();
});

const sourceFolder = (files: Record<string, string | Buffer>) =>
  temp.withFiles(files, 'unstuck-bad-source-');

async function sql<R extends pg.QueryResultRow>(
  url: string,
  text: string,
  params: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<R>(text, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Every execution with its listed total and the file rows it really has. */
function executionsWithFiles(url: string) {
  return sql<{ id: string; total: number; files: number; executing: number }>(
    url,
    `SELECT e.id, e.total,
            (SELECT count(*)::int FROM unstuck.file_executions f WHERE f.execution_id = e.id) AS files,
            (SELECT count(*)::int FROM unstuck.file_executions f
              WHERE f.execution_id = e.id AND f.status = 'EXECUTING') AS executing
     FROM unstuck.workflow_executions e ORDER BY e.id`,
  );
}

// ---- configuration ---------------------------------------------------------------------------

/**
 * A value each variable must refuse. UNSTUCK_DATA_DIR takes any path, so its bad value is one
 * that cannot be a folder (below a regular file), and it is tried without DATABASE_URL.
 */
const badValues: Record<string, string | ((dir: string) => string)> = {
  DATABASE_URL: 'mysql://app@localhost/db',
  DB_RETRY_MAX_RETRIES: 'three',
  DB_RETRY_BASE_DELAY: '-1',
  DB_RETRY_MAX_DELAY: '30s',
  DB_RETRY_BUDGET: '0',
  DB_POOL_SIZE: '0',
  DB_CONNECT_TIMEOUT: 'soon',
  DB_STATEMENT_TIMEOUT: '-1',
  DB_QUERY_TIMEOUT: 'never',
  DB_IDLE_TIMEOUT: '-5',
  DB_PGBOUNCER: 'maybe',
  DB_ECHO: 'sometimes',
  LOG_LEVEL: 'verbose',
  LOG_FORMAT: 'pretty',
  UNSTUCK_DATA_DIR: (dir) => join(dir, 'a-file', 'data'),
  UNSTUCK_PG_PORT: '80',
};

describe('a bad configuration value', { timeout: 120_000 }, () => {
  test('every variable in configReference has a bad value in this table', () => {
    const missing = configReference.map((c) => c.env).filter((env) => !(env in badValues));
    assert.deepEqual(missing, [], 'add a bad value for each new variable');
  });

  test('makes `unstuck status` exit 2 naming the variable, before touching the database', async () => {
    const url = await server.createDatabase();
    const dir = await temp.make();
    await writeFile(join(dir, 'a-file'), 'not a folder');
    const embeddedPort = String(await freePort());
    const failures: string[] = [];
    await eachLimited(configReference, 4, async ({ env: name }) => {
      const bad = badValues[name];
      if (bad === undefined) return; // reported by the test above
      const value = typeof bad === 'function' ? bad(dir) : bad;
      const env =
        name === 'UNSTUCK_DATA_DIR'
          ? { DATABASE_URL: undefined, UNSTUCK_PG_PORT: embeddedPort, [name]: value }
          : { DATABASE_URL: url, [name]: value };
      const r = await cli(['status'], { env, timeoutMs: 30_000 });
      if (r.code !== 2 || !failureText(r).includes(name) || r.ms > 20_000) {
        failures.push(`${name}=${JSON.stringify(value)}: ${shown(r)}`);
      }
    });
    assert.deepEqual(failures, [], failures.join('\n\n'));
    // Validation comes first: not even the schema was created.
    const schema = await sql(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'unstuck'");
    assert.equal(schema.length, 0, 'no schema was created by a process with a bad configuration');
    assert.ok(!existsSync(join(dir, 'a-file', 'data')));
  });

  test('names every bad variable at once, and never prints the password', async () => {
    const r = await cli(['status'], {
      env: {
        DATABASE_URL: 'mysql://app:s3cr3t-pw@db/x',
        DB_POOL_SIZE: 'many',
        LOG_LEVEL: 'loud',
      },
    });
    assertExit(r, 2, 'three bad variables');
    for (const name of ['DATABASE_URL', 'DB_POOL_SIZE', 'LOG_LEVEL']) {
      assert.ok(r.stderr.includes(name), `names ${name}; ${shown(r)}`);
    }
    assert.ok(!r.stderr.includes('s3cr3t-pw'), shown(r));
  });
});

// ---- workflow files and the command line -----------------------------------------------------

describe('a malformed workflow', { timeout: 120_000 }, () => {
  test('run --workflow exits 2 naming the field, and creates no execution', async () => {
    const url = await server.createDatabase();
    const dir = await temp.make();
    await mkdir(join(dir, 'inbox'));
    await writeFile(join(dir, 'inbox', 'a.txt'), 'hello');
    await writeFile(join(dir, 'syntax.mjs'), 'export default function (file {\n');
    await writeFile(join(dir, 'throws.mjs'), 'throw new Error("cannot start: no licence");\n');
    await writeFile(join(dir, 'no-default.mjs'), 'export const step = () => 1;\n');
    const source = { type: 'local', path: './inbox' };
    const cases: { why: string; content: unknown; expect: RegExp }[] = [
      {
        why: 'missing source',
        content: { name: 'w', steps: ['count'] },
        expect: /workflow\.source: is required/,
      },
      {
        why: 'unknown step',
        content: { name: 'w', source, steps: ['count', 'frobnicate'] },
        expect: /workflow\.steps\[1\]: unknown step "frobnicate"/,
      },
      {
        why: 'negative concurrency',
        content: { name: 'w', source, steps: ['count'], options: { concurrency: -3 } },
        expect: /workflow\.options\.concurrency: must be from 1 to 256, got -3/,
      },
      {
        why: 'absurd concurrency',
        content: { name: 'w', source, steps: ['count'], options: { concurrency: 1e9 } },
        expect: /workflow\.options\.concurrency: must be from 1 to 256, got 1000000000/,
      },
      {
        why: 'concurrency that is not a number',
        content: { name: 'w', source, steps: ['count'], options: { concurrency: 'lots' } },
        expect: /workflow\.options\.concurrency: must be a number, got "lots"/,
      },
      {
        why: 'a source folder that does not exist',
        content: { name: 'w', source: { type: 'local', path: './nope' }, steps: ['count'] },
        expect: /workflow\.source\.path: folder ".*nope" does not exist/,
      },
      {
        why: 'a step module with a syntax error',
        content: { name: 'w', source, steps: ['./syntax.mjs'] },
        expect: /workflow\.steps\[0\]: module ".*syntax\.mjs" did not load/,
      },
      {
        why: 'a step module that throws on import',
        content: { name: 'w', source, steps: ['./throws.mjs'] },
        expect:
          /workflow\.steps\[0\]: module ".*throws\.mjs" did not load: cannot start: no licence/,
      },
      {
        why: 'a step module that does not exist',
        content: { name: 'w', source, steps: ['count', './missing.mjs'] },
        expect: /workflow\.steps\[1\]: module ".*missing\.mjs" did not load/,
      },
      {
        why: 'a step module without a default export',
        content: { name: 'w', source, steps: ['./no-default.mjs'] },
        expect: /workflow\.steps\[0\]: module ".*no-default\.mjs" has no default export function/,
      },
      {
        why: 'invalid JSON',
        content: '{ "name": "w", "source": ',
        expect: /workflow file ".*invalid-json\.json" is not valid JSON/,
      },
    ];
    const failures: string[] = [];
    await eachLimited(cases, 4, async ({ why, content, expect }) => {
      const file = join(dir, `${why.replace(/\W+/g, '-').toLowerCase()}.json`);
      await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
      const r = await cli(['run', '--workflow', file], {
        env: { DATABASE_URL: url },
        timeoutMs: 30_000,
      });
      if (r.code !== 2 || !expect.test(failureText(r)) || r.ms > 20_000) {
        failures.push(`${why} (expected ${expect}): ${shown(r)}`);
      }
    });
    assert.deepEqual(failures, [], failures.join('\n\n'));
    const status = await cli(['status', '--json'], { env: { DATABASE_URL: url } });
    assertExit(status, 0, 'status');
    assert.deepEqual(JSON.parse(status.stdout), [], 'no execution was created');
  });

  test('a workflow file that does not exist exits 2 naming it', async () => {
    const url = await server.createDatabase();
    const r = await cli(['run', '--workflow', '/nonexistent/workflow.yaml'], {
      env: { DATABASE_URL: url },
    });
    assertExit(r, 2, 'missing workflow file');
    assert.match(failureText(r), /workflow file "\/nonexistent\/workflow\.yaml" cannot be read/);
  });

  test('--steps with an unknown step exits 2 naming it, and creates no execution', async () => {
    const url = await server.createDatabase();
    const folder = await sourceFolder({ 'a.txt': 'hello' });
    const r = await cli(['run', folder, '--steps', 'decode-text,frobnicate'], {
      env: { DATABASE_URL: url },
    });
    assertExit(r, 2, 'unknown step');
    assert.match(failureText(r), /workflow\.steps\[1\]: unknown step "frobnicate"/);
    const status = await cli(['status', '--json'], { env: { DATABASE_URL: url } });
    assertExit(status, 0, 'status');
    assert.deepEqual(JSON.parse(status.stdout), [], 'no execution was created');
  });

  test('usage errors exit 2 with what is wrong', async () => {
    const url = await server.createDatabase();
    const folder = await sourceFolder({ 'a.txt': 'hello' });
    const cases: { args: string[]; expect: RegExp }[] = [
      { args: ['run'], expect: /name a folder to process, or a --workflow file/ },
      {
        args: ['run', folder, '--steps', 'count', '--workflow', join(folder, 'w.json')],
        expect: /give either --steps or --workflow, not both/,
      },
      { args: ['run', folder, '--workers', '0'], expect: /--workers/ },
      { args: ['files', '1', '--status', 'DONE'], expect: /--status must be PENDING/ },
      { args: ['frobnicate'], expect: /unknown command 'frobnicate'/ },
      { args: ['status', '--frobnicate'], expect: /unknown option '--frobnicate'/ },
      { args: ['files'], expect: /missing required argument 'execution-id'/ },
    ];
    const failures: string[] = [];
    await eachLimited(cases, 4, async ({ args, expect }) => {
      const r = await cli(args, { env: { DATABASE_URL: url }, timeoutMs: 30_000 });
      if (r.code !== 2 || !expect.test(r.stderr)) {
        failures.push(`unstuck ${args.join(' ')} (expected ${expect}): ${shown(r)}`);
      }
    });
    assert.deepEqual(failures, [], failures.join('\n\n'));
  });
});

// ---- databases that cannot be used -----------------------------------------------------------

describe('a database that cannot be used', { timeout: 120_000 }, () => {
  // Short connect timeouts and budgets, so "unavailable" is decided quickly.
  const quick = { DB_CONNECT_TIMEOUT: '0.5', DB_RETRY_BUDGET: '2' };

  test('wrong password, unknown host, unknown database: exit 3 naming the cause', async () => {
    const good = new URL(server.url());
    const wrongPassword = new URL(good);
    wrongPassword.password = 'not-the-password';
    const unknownDatabase = new URL(good);
    unknownDatabase.pathname = '/no_such_database';
    const cases: { why: string; url: string; expect: RegExp }[] = [
      {
        why: 'wrong password',
        url: wrongPassword.toString(),
        expect: /password authentication failed/,
      },
      {
        why: 'unknown host',
        url: 'postgres://app:pw@nonexistent.invalid:5432/db',
        expect: /nonexistent\.invalid/,
      },
      {
        why: 'unknown database',
        url: unknownDatabase.toString(),
        expect: /database "no_such_database" does not exist/,
      },
    ];
    const failures: string[] = [];
    await eachLimited(cases, 3, async ({ why, url, expect }) => {
      const r = await cli(['status'], { env: { DATABASE_URL: url, ...quick }, timeoutMs: 40_000 });
      const text = failureText(r);
      if (r.code !== 3 || !expect.test(text) || r.ms > 20_000) {
        failures.push(`${why} (expected ${expect} within 20 s): ${shown(r)}`);
      }
      assert.ok(!text.includes('not-the-password'), `${why}: the password is not printed`);
    });
    assert.deepEqual(failures, [], failures.join('\n\n'));
  });

  test('a server that never answers: exit 3 naming the timeout, in bounded time', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    proxies.push(proxy);
    proxy.setMode('blackhole');
    const url = proxy.url(await server.createDatabase());
    const r = await cli(['status'], {
      env: { DATABASE_URL: url, ...quick, DB_RETRY_MAX_RETRIES: '3' },
      timeoutMs: 60_000,
    });
    assertExit(r, 3, 'blackholed server');
    assert.match(failureText(r), /database unavailable: .*connection timeout/i, shown(r));
    // Four attempts of 0.5 s and three pauses of at most 0.5 s, plus start-up on a busy machine.
    assert.ok(r.ms < 15_000, `gave up within 15 s: ${shown(r)}`);
  });

  test('a server that never answers: DB_RETRY_BUDGET bounds the wait however many retries are allowed', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    proxies.push(proxy);
    proxy.setMode('blackhole');
    const url = proxy.url(await server.createDatabase());
    const r = await cli(['status'], {
      env: { DATABASE_URL: url, ...quick, DB_RETRY_MAX_RETRIES: '1000' },
      timeoutMs: 12_000,
    });
    assertExit(r, 3, 'blackholed server');
    // The 2 s budget, one more 0.5 s attempt, start-up on a busy machine.
    assert.ok(r.ms < 10_000, `gave up within 10 s: ${shown(r)}`);
  });
});

// ---- a submit cut off mid-listing ------------------------------------------------------------

describe('a submit interrupted mid-listing', { timeout: 150_000 }, () => {
  let bigFolder: string;
  const bigCount = 20_000;

  before(async () => {
    bigFolder = await temp.make('unstuck-big-source-');
    const names = Array.from({ length: bigCount }, (_, i) => `f${String(i).padStart(5, '0')}.txt`);
    await eachLimited(names, 64, (name) => writeFile(join(bigFolder, name), name));
  });

  /** Resolves once the submit's transaction is open and has inserted file rows (not committed). */
  function listingUnderWay(url: string, on = server) {
    const database = new URL(url).pathname.slice(1);
    return waitFor(
      async () => {
        const rows = await sql(
          on.url(),
          `SELECT pid FROM pg_stat_activity
           WHERE datname = $1 AND xact_start IS NOT NULL
             AND query LIKE 'INSERT INTO unstuck.file_executions%'`,
          [database],
        );
        return rows.length > 0;
      },
      { timeoutMs: 60_000, intervalMs: 10, message: 'the submit to be inserting file rows' },
    );
  }

  test('terminated connections: the submit starts over and records all files once', async () => {
    const url = await server.createDatabase();
    const submit = spawnCli(['submit', bigFolder, '--json'], {
      env: { DATABASE_URL: url },
      timeoutMs: 120_000,
    });
    await listingUnderWay(url);
    const terminated = await server.terminateBackends(new URL(url).pathname.slice(1));
    assert.ok(terminated > 0, 'a connection was terminated');
    const r = await submit.result;
    assertExit(r, 0, 'submit');
    assert.match(
      r.stderr,
      /"op":"submit execution".*database operation failed; retrying/,
      shown(r),
    );
    const { executionId } = JSON.parse(r.stdout) as { executionId: string };
    const executions = await executionsWithFiles(url);
    assert.deepEqual(executions, [
      { id: executionId, total: bigCount, files: bigCount, executing: 0 },
    ]);
  });

  test('the server stopped mid-listing: the submit waits for it and records all files once', async () => {
    const own = await startTestServer();
    try {
      const url = await own.createDatabase();
      const submit = spawnCli(['submit', bigFolder, '--json'], {
        env: { DATABASE_URL: url },
        timeoutMs: 120_000,
      });
      await listingUnderWay(url, own);
      await own.stop('fast');
      // Start it again only once the submit is seen waiting for the server that is gone.
      await waitFor(() => /"op":"submit execution".*"code":"ECONNREFUSED"/.test(submit.stderr()), {
        timeoutMs: 30_000,
        message: 'the submit to retry against the stopped server',
      });
      await own.start();
      const r = await submit.result;
      assertExit(r, 0, 'submit across a server restart');
      const { executionId } = JSON.parse(r.stdout) as { executionId: string };
      assert.deepEqual(await executionsWithFiles(url), [
        { id: executionId, total: bigCount, files: bigCount, executing: 0 },
      ]);
    } finally {
      await own.destroy();
    }
  });

  test('a submit killed mid-listing leaves nothing: no execution without its files', async () => {
    const url = await server.createDatabase();
    const submit = spawnCli(['submit', bigFolder, '--json'], {
      env: { DATABASE_URL: url },
      timeoutMs: 120_000,
    });
    await listingUnderWay(url);
    submit.child.kill('SIGKILL');
    const r = await submit.result;
    assert.equal(r.signal, 'SIGKILL', shown(r));
    // The server rolls the transaction back once it sees the connection gone.
    const database = new URL(url).pathname.slice(1);
    await waitFor(
      async () =>
        (
          await sql(
            server.url(),
            'SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT NULL',
            [database],
          )
        ).length === 0,
      { timeoutMs: 30_000, message: 'the killed submit’s transaction to end' },
    );
    assert.deepEqual(await executionsWithFiles(url), []);
    const files = await sql(url, 'SELECT count(*)::int AS n FROM unstuck.file_executions');
    assert.deepEqual(files, [{ n: 0 }]);
    const status = await cli(['status', '--json'], { env: { DATABASE_URL: url } });
    assertExit(status, 0, 'status after the killed submit');
    assert.deepEqual(JSON.parse(status.stdout), []);
  });
});

// ---- file names a folder should not have -----------------------------------------------------

describe('awkward files in a run', { timeout: 120_000 }, () => {
  test('end COMPLETED or ERROR with a reason, and the summary matches files --json', async () => {
    const url = await server.createDatabase();
    const root = await temp.make();
    await writeFile(join(root, 'outside.txt'), 'a secret beside the source');
    const folder = join(root, 'source');
    await mkdir(join(folder, 'sub'), { recursive: true });
    await writeFile(join(folder, 'plain.txt'), 'plain text\n');
    await writeFile(join(folder, 'new\nline.txt'), 'a name with a newline\n');
    await writeFile(join(folder, 'tab\tand "quotes".txt'), 'odd but valid\n');
    // A name that is not UTF-8 can only be made through bytes.
    await writeFile(Buffer.from(join(folder, 'latin1-\xe9t\xe9.txt'), 'latin1'), 'été\n');
    await symlink('loop-b', join(folder, 'loop-a'));
    await symlink('loop-a', join(folder, 'loop-b'));
    await symlink('../outside.txt', join(folder, 'escape.txt'));
    await symlink('/etc/hostname', join(folder, 'absolute.txt'));
    await symlink('../plain.txt', join(folder, 'sub', 'inside-link.txt'));
    await symlink('..', join(folder, 'sub', 'up')); // a folder cycle: not followed
    await symlink('nowhere', join(folder, 'dangling.txt'));
    let fifo = false;
    try {
      execFileSync('mkfifo', [join(folder, 'pipe')]);
      fifo = true;
    } catch {
      // no mkfifo here: that case is left out
    }

    const r = await cli(['run', folder, '--json'], {
      env: { DATABASE_URL: url },
      timeoutMs: 60_000,
    });
    assertExit(r, 0, 'run over awkward files');
    const summary = JSON.parse(r.stdout) as {
      id: string;
      status: string;
      total: number;
      completed: number;
      failed: number;
      stopped: number;
      failedFiles: { path: string; error: string }[];
    };
    const files = await cli(['files', summary.id, '--json'], { env: { DATABASE_URL: url } });
    assertExit(files, 0, 'files');
    const rows = JSON.parse(files.stdout) as { path: string; status: string; error: string }[];
    const byPath = new Map(rows.map((f) => [f.path, f]));

    const count = (status: string) => rows.filter((f) => f.status === status).length;
    assert.equal(summary.total, rows.length, 'total');
    assert.equal(summary.completed, count('COMPLETED'), 'completed');
    assert.equal(summary.failed, count('ERROR'), 'failed');
    assert.equal(summary.stopped, 0);
    assert.equal(count('PENDING') + count('EXECUTING'), 0, 'every file is terminal');
    assert.equal(summary.status, 'COMPLETED');
    for (const f of rows.filter((f) => f.status === 'ERROR')) {
      assert.ok(f.error, `${JSON.stringify(f.path)} has a reason`);
    }
    assert.deepEqual(
      summary.failedFiles.map((f) => f.path).sort(),
      rows
        .filter((f) => f.status === 'ERROR')
        .map((f) => f.path)
        .sort(),
    );

    const expected: Record<string, string | RegExp> = {
      'plain.txt': 'COMPLETED',
      'new\nline.txt': 'COMPLETED',
      'tab\tand "quotes".txt': 'COMPLETED',
      'sub/inside-link.txt': 'COMPLETED',
      'latin1-\\xe9t\\xe9.txt': /not valid UTF-8/,
      'loop-a': /symlink loop/,
      'loop-b': /symlink loop/,
      'escape.txt': /leads outside the source folder/,
      'absolute.txt': /leads outside the source folder/,
      'dangling.txt': /dangling symlink/,
      ...(fifo && { pipe: /not a regular file: it is a FIFO/ }),
    };
    for (const [path, want] of Object.entries(expected)) {
      const row = byPath.get(path);
      assert.ok(
        row,
        `${JSON.stringify(path)} is listed; got ${JSON.stringify([...byPath.keys()])}`,
      );
      if (typeof want === 'string') assert.equal(row.status, want, JSON.stringify(row));
      else {
        assert.equal(row.status, 'ERROR', JSON.stringify(row));
        assert.match(row.error, want);
      }
    }
    assert.equal(rows.length, Object.keys(expected).length, 'nothing else was listed');
    assert.ok(!r.stderr.includes('    at '), `no stack trace: ${shown(r)}`);
  });
});
