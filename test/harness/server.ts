// Throwaway PostgreSQL servers for tests: each in its own temporary folder on a free port,
// tuned for speed over durability, and never left behind when the test process ends.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { EmbeddedServer, PortInUseError, type StopMode } from '../../src/db/embedded-server.js';
import { cleanUpAtExit } from './exit-cleanup.js';
import { freePort } from './free-port.js';

export interface TestServer {
  port: number;
  password: string;
  server: EmbeddedServer;
  url(database?: string): string;
  /** A fresh, uniquely named database; returns its URL. */
  createDatabase(): Promise<string>;
  /** Terminates every client backend but its own (optionally one database's); returns how many. */
  terminateBackends(database?: string): Promise<number>;
  stop(mode?: StopMode): Promise<void>;
  /** Starts again, with the same data and port. */
  start(): Promise<void>;
  restart(mode: 'fast' | 'immediate'): Promise<void>;
  /** Stops immediately and deletes the data folder. */
  destroy(): Promise<void>;
}

export interface TestServerOptions {
  /** Server settings on top of fsync=off, full_page_writes=off, max_connections=100. */
  settings?: Record<string, string | number>;
}

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const root = await mkdtemp(join(os.tmpdir(), 'unstuck-pg-'));
  // mkdtemp makes it 0700, but as root the server runs as user postgres and must get in.
  await chmod(root, 0o755);
  const password = randomBytes(12).toString('hex');
  try {
    const server = await startOnFreePort(join(root, 'data'), password, options.settings);
    return testServer(server, root, password);
  } catch (err) {
    await rm(root, { recursive: true, force: true });
    throw err;
  }
}

/** Another process may take the free port before the server binds it: try a new one. */
async function startOnFreePort(
  dataDir: string,
  password: string,
  extra: Record<string, string | number> = {},
): Promise<EmbeddedServer> {
  const settings = { fsync: 'off', full_page_writes: 'off', max_connections: 100, ...extra };
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const timeouts = { startTimeoutSeconds: 30, stopTimeoutSeconds: 30 };
    const server = new EmbeddedServer({
      dataDir,
      port,
      password,
      settings,
      noSync: true,
      ...timeouts,
    });
    try {
      await server.start();
      return server;
    } catch (err) {
      const portTaken = err instanceof PortInUseError || /Address already in use/.test(String(err));
      if (!portTaken || attempt >= 3) throw err;
    }
  }
}

function testServer(server: EmbeddedServer, root: string, password: string): TestServer {
  // The servers run detached (that is what the product needs), so nothing stops them when the
  // test process dies but this.
  const forget = cleanUpAtExit(() => {
    server.stopSync('immediate');
    rmSync(root, { recursive: true, force: true });
  });
  let destroyed = false;
  const url = (database?: string) => server.url(database);
  return {
    port: server.port,
    password,
    server,
    url,
    createDatabase: () => createDatabase(url),
    terminateBackends: (database) => terminateBackends(url(), database),
    stop: async (mode = 'fast') => void (await server.stop(mode)),
    start: async () => void (await server.start()),
    restart: async (mode) => {
      await server.stop(mode);
      await server.start();
    },
    destroy: async () => {
      if (destroyed) return;
      destroyed = true;
      forget();
      await server.stop('immediate').catch(() => server.stopSync('immediate'));
      await rm(root, { recursive: true, force: true });
    },
  };
}

let databaseCount = 0;

async function createDatabase(url: (database?: string) => string): Promise<string> {
  const name = `test_${process.pid}_${++databaseCount}_${randomBytes(3).toString('hex')}`;
  await adminQuery(url(), `CREATE DATABASE ${name}`);
  return url(name);
}

async function terminateBackends(adminUrl: string, database?: string): Promise<number> {
  // The timeout makes it wait until each backend has gone, so callers can rely on it.
  const result = await adminQuery(
    adminUrl,
    `SELECT count(*)::int AS n FROM (
       SELECT pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
         AND ($1::text IS NULL OR datname = $1)
     ) t WHERE ok`,
    [database ?? null],
  );
  return (result.rows[0] as { n: number }).n;
}

/** One short-lived connection per call: nothing stays connected across a restart. */
async function adminQuery(url: string, sql: string, params: unknown[] = []) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined); // a restart must not crash the test process
  try {
    await client.connect();
    return await client.query(sql, params);
  } finally {
    await client.end().catch(() => undefined);
  }
}

let shared: Promise<TestServer> | undefined;

/**
 * One server for the whole test process, started on first use and destroyed when the process
 * ends. For test files that never stop or restart it; give each test its own createDatabase().
 */
export function sharedTestServer(): Promise<TestServer> {
  shared ??= startTestServer().catch((err: unknown) => {
    shared = undefined;
    throw err;
  });
  return shared;
}
