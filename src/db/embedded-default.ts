import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { ConfigError, type Config } from '../config.js';
import { log } from '../log.js';
import { EmbeddedServer, mkdirReachable } from './embedded-server.js';

/**
 * The zero-set-up database used when DATABASE_URL is absent: a PostgreSQL server of our own,
 * with its data under the unstuck data folder, started on demand and reused while it runs.
 */

export const EMBEDDED_DATABASE = 'unstuck';

export interface EmbeddedDefault {
  url: string;
  dataDir: string;
  port: number;
  /** False when a server left running (e.g. by `unstuck db start`) was reused. */
  startedHere: boolean;
  /** Stops the server if this call started it (once); otherwise leaves it running. */
  stop(): Promise<void>;
}

export interface EmbeddedDefaultOptions {
  /** No stop on process exit: the server outlives this process (`unstuck db start`). */
  keepRunning?: boolean;
}

function embeddedPaths(config: Config) {
  const base = resolve(process.cwd(), config.dataDir);
  return { base, dataDir: join(base, 'pg'), passwordFile: join(base, 'password') };
}

/** The password chosen on first use; the server's data is useless without it. */
function readOrCreatePassword(base: string, passwordFile: string): string {
  try {
    return readFileSync(passwordFile, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirReachable(base);
  const password = randomBytes(24).toString('base64url');
  try {
    writeFileSync(passwordFile, `${password}\n`, { mode: 0o600, flag: 'wx' });
    chmodSync(passwordFile, 0o600);
    return password;
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      return readFileSync(passwordFile, 'utf8').trim();
    throw err;
  }
}

/** The server behind the default database, for `unstuck db start|stop|status`. */
export function embeddedServerFor(config: Config): EmbeddedServer {
  const { base, dataDir, passwordFile } = embeddedPaths(config);
  let password: string;
  try {
    password = readOrCreatePassword(base, passwordFile);
  } catch (err) {
    // A folder that cannot be made or read (a file in the way, no permission) is a setting to fix.
    throw new ConfigError(
      `invalid configuration:\n  UNSTUCK_DATA_DIR=${JSON.stringify(config.dataDir)} cannot be used: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return new EmbeddedServer({ dataDir, port: config.embeddedPort, password });
}

/** Starts (or reuses) the embedded server and makes sure the unstuck database exists. */
export async function startEmbeddedDefault(
  config: Config,
  options: EmbeddedDefaultOptions = {},
): Promise<EmbeddedDefault> {
  const server = embeddedServerFor(config);
  const { reused } = await server.start();
  const startedHere = !reused;
  // A crashed run must not leave a server behind that nobody knows about.
  const safetyNet = () => void server.stopSync('fast');
  let owned = startedHere;
  if (owned && !options.keepRunning) process.on('exit', safetyNet);
  const stop = async () => {
    if (!owned) return;
    owned = false;
    process.off('exit', safetyNet);
    await server.stop('fast');
  };
  try {
    const { passwordFile } = embeddedPaths(config);
    await ensureDatabase(server, passwordFile, config.connectTimeout * 1000);
    const version = await server.version();
    const how = startedHere ? 'started' : 'reused';
    log.info(
      { dataDir: server.dataDir, port: server.port, version, startedHere },
      `embedded PostgreSQL ${version} on 127.0.0.1:${server.port}, data in ${server.dataDir} (${how})`,
    );
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  const url = server.url(EMBEDDED_DATABASE);
  return { url, dataDir: server.dataDir, port: server.port, startedHere, stop };
}

async function ensureDatabase(
  server: EmbeddedServer,
  passwordFile: string,
  connectTimeoutMs: number,
): Promise<void> {
  const name = EMBEDDED_DATABASE;
  const client = new pg.Client({
    connectionString: server.url('postgres'),
    connectionTimeoutMillis: connectTimeoutMs,
  });
  // Without a listener, a server restart while connected would crash the process.
  client.on('error', () => undefined);
  try {
    await client.connect();
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (found.rowCount === 0)
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`).catch(ignoreDuplicate);
  } catch (err) {
    if ((err as { code?: string }).code === '28P01')
      throw new Error(
        `the password in ${passwordFile} does not open the PostgreSQL ` +
          `data in ${server.dataDir}; restore that file, or delete both to start afresh`,
        { cause: err },
      );
    throw err;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Two processes creating it at once: the loser gets 42P04, or 23505 from the catalog index. */
function ignoreDuplicate(err: { code?: string }): void {
  if (err.code !== '42P04' && err.code !== '23505') throw err;
}
