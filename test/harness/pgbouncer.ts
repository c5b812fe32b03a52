// A real PgBouncer in front of a test server, so tests see the pooler's own failure modes
// (its 08P01 errors, transaction pooling, its death) rather than a simulation of them.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  accessSync,
  chownSync,
  constants,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { cleanUpAtExit } from './exit-cleanup.js';
import { freePort } from './free-port.js';

export interface PgBouncer {
  port: number;
  url(databaseUrl: string): string;
  start(): Promise<void>;
  stop(signal?: 'SIGINT' | 'SIGTERM' | 'SIGKILL'): Promise<void>;
  restart(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  destroy(): Promise<void>;
}

const START_TIMEOUT_MS = 10_000;
// SIGINT is PgBouncer's safe shutdown: it waits for running transactions, so give it longer.
const STOP_TIMEOUT_MS = 15_000;

/** Debian puts it in /usr/sbin, which is not on a normal user's PATH. */
function findBinary(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/usr/local/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const file = path.join(dir, 'pgbouncer');
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

export function pgbouncerSkipReason(): string | undefined {
  if (findBinary()) return undefined;
  const reason = 'pgbouncer is not installed (apt-get install -y pgbouncer)';
  if (process.env.CI) throw new Error(`${reason}; PgBouncer tests are mandatory in CI`);
  return reason;
}

export async function startPgBouncer(
  server: { port: number; password: string },
  options: {
    poolMode?: 'transaction' | 'session';
    settings?: Record<string, string | number>;
  } = {},
): Promise<PgBouncer> {
  const binary = findBinary();
  if (!binary) throw new Error(pgbouncerSkipReason() ?? 'pgbouncer is not installed');
  if (/[\r\n]/.test(server.password)) throw new Error('password must not contain a line break');

  // PgBouncer refuses to run as root; as root we run it as postgres, who must own its files.
  const owner = process.getuid?.() === 0 ? postgresUser() : undefined;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'unstuck-pgbouncer-'));
  const ini = path.join(dir, 'pgbouncer.ini');
  const logfile = path.join(dir, 'pgbouncer.log');
  const pidfile = path.join(dir, 'pgbouncer.pid');
  const userlist = path.join(dir, 'userlist.txt');
  writeFileSync(userlist, '"postgres" ""\n', { mode: 0o600 });
  const password = `'${server.password.replaceAll("'", "''")}'`;
  const writeConfig = (listenPort: number): void => {
    const settings: Record<string, string | number> = {
      listen_addr: '127.0.0.1',
      listen_port: listenPort,
      unix_socket_dir: '',
      auth_type: 'trust',
      auth_file: userlist,
      pool_mode: options.poolMode ?? 'transaction',
      server_login_retry: 1,
      max_client_conn: 200,
      default_pool_size: 20,
      logfile,
      pidfile,
      ...options.settings,
    };
    const lines = [
      '[databases]',
      `* = host=127.0.0.1 port=${server.port} user=postgres password=${password}`,
      '',
      '[pgbouncer]',
      ...Object.entries(settings).map(([key, value]) => `${key} = ${value}`),
      '',
    ];
    writeFileSync(ini, lines.join('\n'), { mode: 0o600 });
    if (owner) {
      for (const file of [dir, ini, userlist]) chownSync(file, owner.uid, owner.gid);
    }
  };
  const fixedPort = options.settings?.listen_port;
  let port = fixedPort === undefined ? await freePort() : Number(fixedPort);
  writeConfig(port);

  let child: ChildProcess | undefined;
  // A test process that fails, forgets destroy() or is interrupted must not leave a pooler or
  // its folder behind.
  const forget = cleanUpAtExit(() => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  let exited: Promise<void> = Promise.resolve();
  let stderrTail = '';
  // Readiness is its own log line, not just an open port: the port may belong to someone else.
  let listening = false;

  const logTail = (): string => {
    let text = '';
    try {
      text = readFileSync(logfile, 'utf8');
    } catch {
      // it may fail before opening its log; stderr has the same lines
    }
    const lines = (text || stderrTail).trimEnd().split('\n').slice(-15);
    return `\n--- ${logfile} (tail) ---\n${lines.join('\n')}`;
  };

  const alive = (): boolean => child !== undefined && child.exitCode === null && !child.signalCode;

  const start = async (): Promise<void> => {
    if (alive()) return;
    // Our previous run is known dead; a stale pid file could name someone else's live process.
    rmSync(pidfile, { force: true });
    stderrTail = '';
    listening = false;
    // Spawning with uid/gid (not via runuser) makes the child PgBouncer itself, so our signals
    // reach it unchanged: runuser turns SIGINT into SIGTERM and cannot pass on SIGKILL.
    const proc = spawn(binary, [ini], {
      stdio: ['ignore', 'ignore', 'pipe'],
      ...(owner ? { uid: owner.uid, gid: owner.gid } : {}),
    });
    child = proc;
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (chunk: string) => {
      stderrTail = (stderrTail + chunk).slice(-4000);
      listening ||= stderrTail.includes(`listening on 127.0.0.1:${port}`);
    });
    let spawnError: Error | undefined;
    exited = new Promise<void>((resolve) => {
      proc.on('error', (error) => {
        spawnError = error;
        resolve();
      });
      proc.once('exit', () => resolve());
    });

    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (spawnError) throw new Error(`pgbouncer could not be started: ${spawnError.message}`);
      if (!alive()) {
        throw new Error(
          `pgbouncer exited during start (code ${proc.exitCode}, signal ${proc.signalCode})${logTail()}`,
        );
      }
      if (listening && (await accepts(port))) return;
      if (Date.now() > deadline) {
        throw new Error(
          `pgbouncer did not accept connections on 127.0.0.1:${port} within ${START_TIMEOUT_MS} ms${logTail()}`,
        );
      }
      await delay(50);
    }
  };

  const stop = async (signal: 'SIGINT' | 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> => {
    if (!child || !alive()) return;
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
    });
    const outcome = await Promise.race([exited, timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      throw new Error(
        `pgbouncer did not exit within ${STOP_TIMEOUT_MS} ms of ${signal}${logTail()}`,
      );
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (await accepts(port)) {
      if (Date.now() > deadline) {
        throw new Error(
          `port ${port} still accepts connections after pgbouncer exited${logTail()}`,
        );
      }
      await delay(50);
    }
  };

  // Another process can take the free port before PgBouncer binds it: then try a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      await start();
      break;
    } catch (error) {
      await stop('SIGKILL').catch(() => {});
      const portTaken = /Address already in use/.test(String(error));
      if (portTaken && fixedPort === undefined && attempt < 3) {
        port = await freePort();
        writeConfig(port);
        continue;
      }
      forget();
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }

  return {
    port,
    url(databaseUrl: string): string {
      const url = new URL(databaseUrl);
      url.hostname = '127.0.0.1';
      url.port = String(port);
      return url.toString();
    },
    start,
    stop,
    async restart(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
      await stop(signal);
      await start();
    },
    async destroy(): Promise<void> {
      try {
        await stop('SIGTERM');
      } catch {
        await stop('SIGKILL');
      }
      forget();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function postgresUser(): { uid: number; gid: number } {
  try {
    const id = (flag: string): number =>
      Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new Error('running as root needs a "postgres" user to run pgbouncer as');
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether something listens on the port; a bounded connect, since a stuck SYN must not hang us. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    // A connect to a free port on loopback can, rarely, connect the socket to itself.
    socket.once('connect', () => done(socket.localPort !== socket.remotePort));
    socket.once('error', () => done(false));
  });
}
