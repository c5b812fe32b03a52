import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import { loadConfig } from '../../src/config.js';
import { startEmbeddedDefault } from '../../src/db/embedded-default.js';
import { EmbeddedServer, PortInUseError } from '../../src/db/embedded-server.js';
import { packageRoot } from '../../src/paths.js';
import { freePort } from '../harness/free-port.js';
import { startTestServer } from '../harness/server.js';

const folders: string[] = [];
const servers: EmbeddedServer[] = [];

after(async () => {
  for (const server of servers) await server.stop('immediate').catch(() => undefined);
  for (const folder of folders) await rm(folder, { recursive: true, force: true });
});

/** A temporary folder the server user (postgres, when we are root) can get into. */
async function tempFolder(): Promise<string> {
  const folder = await mkdtemp(join(os.tmpdir(), 'unstuck-embedded-test-'));
  await chmod(folder, 0o755);
  folders.push(folder);
  return folder;
}

async function newServer(dataDir?: string, port?: number): Promise<EmbeddedServer> {
  const server = new EmbeddedServer({
    dataDir: dataDir ?? join(await tempFolder(), 'pg'),
    port: port ?? (await freePort()),
    password: 'it is a secret',
    settings: { fsync: 'off' },
    noSync: true,
  });
  servers.push(server);
  return server;
}

async function queryOne(url: string, sql: string): Promise<Record<string, unknown>> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query(sql)).rows[0] as Record<string, unknown>;
  } finally {
    await client.end();
  }
}

async function waitFor(what: string, condition: () => boolean | Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function timed<T>(work: Promise<T>): Promise<{ value?: T; error?: unknown; ms: number }> {
  const started = Date.now();
  try {
    return { value: await work, ms: Date.now() - started };
  } catch (error) {
    return { error, ms: Date.now() - started };
  }
}

function childPids(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map(Number);
  } catch {
    return []; // pgrep exits 1 when there are none
  }
}

/** Alive and not a zombie: where PID 1 reaps nothing, killed processes stay zombies. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) [ZX]/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return process.platform !== 'linux'; // no /proc: kill(pid, 0) is all there is
  }
}

describe('EmbeddedServer', { timeout: 120_000 }, () => {
  test('start, status, query, stop', async () => {
    const server = await newServer();
    assert.deepEqual(await server.status(), { running: false });
    assert.deepEqual(await server.start(), { reused: false });
    const status = await server.status();
    assert.equal(status.running, true);
    assert.equal(status.port, server.port);
    assert.ok(status.pid && status.pid > 0);
    assert.match(await server.version(), /^17\.\d+$/);
    const row = await queryOne(server.url(), 'SELECT current_setting($$fsync$$) AS fsync');
    assert.equal(row.fsync, 'off');
    assert.equal(await server.stop(), true);
    assert.equal((await server.status()).running, false);
    assert.equal(await server.stop(), false);
  });

  test('a second EmbeddedServer on the same data folder reuses the running server', async () => {
    const first = await newServer();
    await first.start();
    const second = await newServer(first.dataDir, first.port);
    assert.deepEqual(await second.start(), { reused: true });
    assert.equal((await second.status()).pid, (await first.status()).pid);
    const other = await newServer(first.dataDir, await freePort());
    await assert.rejects(other.start(), /already running on port \d+, not \d+/);
    assert.equal(await second.stop('smart'), true);
    assert.equal((await first.status()).running, false);
  });

  test('a busy port fails fast with a message naming it and UNSTUCK_PG_PORT', async () => {
    const squatter = net.createServer((socket) => socket.destroy());
    const port = await freePort();
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    try {
      const server = await newServer(undefined, port);
      const { error, ms } = await timed(server.start());
      assert.ok(error instanceof PortInUseError, `expected PortInUseError, got ${error}`);
      assert.match(error.message, new RegExp(`port ${port}\\b.*UNSTUCK_PG_PORT`));
      assert.ok(ms < 10_000, `took ${ms} ms`);
      assert.equal((await server.status()).running, false);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  });

  test('starts again after the postmaster and its children were SIGKILLed', async () => {
    const server = await newServer();
    await server.start();
    const { pid } = await server.status();
    assert.ok(pid);
    const children = childPids(pid);
    assert.ok(children.length > 0, 'the postmaster has no children');
    for (const p of [pid, ...children]) process.kill(p, 'SIGKILL');
    await waitFor('the server to be seen as down', async () => !(await server.status()).running);
    assert.ok(existsSync(join(server.dataDir, 'postmaster.pid')), 'the pid file is stale');
    assert.deepEqual(await server.start(), { reused: false });
    const row = await queryOne(server.url(), 'SELECT 1 AS one');
    assert.equal(row.one, 1);
    assert.equal(await server.stop('immediate'), true);
  });

  test('stop() after an external kill returns promptly', async () => {
    const server = await newServer();
    await server.start();
    const { pid } = await server.status();
    assert.ok(pid);
    const children = childPids(pid);
    process.kill(pid, 'SIGKILL');
    // The signal is delivered asynchronously: until it lands, stop() would stop it normally.
    await waitFor('the postmaster to die', () => !alive(pid));
    const { value, ms } = await timed(server.stop());
    assert.equal(value, false);
    assert.ok(ms < 5_000, `took ${ms} ms`);
    // Orphaned children notice the postmaster's death and leave on their own.
    await waitFor('the orphaned backends to exit', () => children.every((c) => !alive(c)));
    assert.deepEqual(await server.start(), { reused: false });
    assert.equal(await server.stop('fast'), true);
  });

  test('a start that fails includes the end of the server log', async () => {
    const server = new EmbeddedServer({
      dataDir: join(await tempFolder(), 'pg'),
      port: await freePort(),
      password: 'x',
      noSync: true,
      settings: { shared_buffers: 'lots' },
    });
    servers.push(server);
    await assert.rejects(server.start(), (err: Error) => {
      assert.match(err.message, /did not start/);
      assert.match(err.message, /last lines of .*server\.log:\n.*shared_buffers/s);
      return true;
    });
  });
});

describe('startEmbeddedDefault', { timeout: 120_000 }, () => {
  test('creates the data, the password file and the unstuck database; reuses; stops', async () => {
    const cwd = await tempFolder();
    const config = loadConfig({ UNSTUCK_PG_PORT: String(await freePort()) });
    const home = process.cwd();
    process.chdir(cwd); // the data folder is relative to the working directory
    let first;
    try {
      first = await startEmbeddedDefault(config);
    } finally {
      process.chdir(home);
    }
    servers.push(new EmbeddedServer({ dataDir: first.dataDir, port: first.port, password: '' }));
    assert.equal(first.dataDir, join(cwd, '.unstuck', 'pg'));
    assert.equal(first.startedHere, true);
    assert.equal(statSync(join(cwd, '.unstuck', 'password')).mode & 0o777, 0o600);
    const row = await queryOne(first.url, 'SELECT current_database() AS db');
    assert.equal(row.db, 'unstuck');

    const second = await startEmbeddedDefault({ ...config, dataDir: join(cwd, '.unstuck') });
    assert.equal(second.startedHere, false);
    assert.equal(second.url, first.url);
    await second.stop(); // not its server: leaves it running
    assert.equal((await queryOne(first.url, 'SELECT 1 AS one')).one, 1);

    await first.stop();
    await assert.rejects(queryOne(first.url, 'SELECT 1'), /ECONNREFUSED/);
  });

  test('a process that exits without stop() does not leave its server running', async () => {
    const dataDir = join(await tempFolder(), '.unstuck');
    const port = await freePort();
    const script = `
      const { loadConfig } = await import('./src/config.ts');
      const { startEmbeddedDefault } = await import('./src/db/embedded-default.ts');
      await startEmbeddedDefault(loadConfig({ UNSTUCK_DATA_DIR: ${JSON.stringify(dataDir)}, UNSTUCK_PG_PORT: '${port}' }));
      process.exit(3);`;
    const run = promisify(execFile);
    const args = ['--import', 'tsx', '--input-type=module', '-e', script];
    const server = new EmbeddedServer({ dataDir: join(dataDir, 'pg'), port, password: '' });
    servers.push(server); // stopped after the tests should the safety net fail
    const { error } = await timed(
      run(process.execPath, args, { cwd: packageRoot, timeout: 60_000 }),
    );
    assert.equal((error as { code?: number }).code, 3, String(error));
    assert.equal((await server.status()).running, false);
    assert.ok(existsSync(join(dataDir, 'pg', 'PG_VERSION')));
  });
});

describe('test harness server', { timeout: 120_000 }, () => {
  test('databases, terminateBackends, restart and destroy', async () => {
    const ts = await startTestServer({ settings: { max_connections: 20 } });
    try {
      const url = await ts.createDatabase();
      assert.notEqual(url, await ts.createDatabase());
      const row = await queryOne(url, 'SHOW max_connections');
      assert.equal(row.max_connections, '20');
      const client = new pg.Client(url);
      const errors: Error[] = [];
      client.on('error', (err) => errors.push(err));
      await client.connect();
      const database = new URL(url).pathname.slice(1);
      assert.equal(await ts.terminateBackends(database), 1);
      await waitFor('the client to see its termination', () => errors.length > 0);
      assert.equal((errors[0] as { code?: string }).code, '57P01');
      await ts.restart('immediate');
      assert.equal((await queryOne(url, 'SELECT 1 AS one')).one, 1);
    } finally {
      await ts.destroy();
    }
    assert.equal(existsSync(ts.server.dataDir), false);
  });
});
