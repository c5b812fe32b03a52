// How the chaos harness runs unstuck: the real CLI as its own OS process, so a fault can kill
// it like any deployed worker, with settings suited to faults that last seconds.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const main = resolve(repoRoot, 'src/cli/main.ts');

/**
 * Short backoff (50 ms base, 1 s cap) with retries enough to outlast a 10 s outage within the
 * budget; connect and reply timeouts short enough that a blackhole is noticed within seconds
 * (the reply timeout below the 5 s blackhole, so a statement caught in it always times out).
 */
export function cliEnv(databaseUrl: string, pgbouncer: boolean): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: databaseUrl,
    DB_PGBOUNCER: String(pgbouncer),
    DB_RETRY_MAX_RETRIES: '1000',
    DB_RETRY_BASE_DELAY: '0.05',
    DB_RETRY_MAX_DELAY: '1',
    DB_RETRY_BUDGET: '60',
    DB_CONNECT_TIMEOUT: '2',
    DB_QUERY_TIMEOUT: '4',
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
  };
  // Started from node's test runner, a child would otherwise think it is a test subprocess.
  delete env.NODE_TEST_CONTEXT;
  return env;
}

/** Spawns `unstuck <args>`; stderr (the JSON log) and stdout go to the given files. */
export function spawnCli(
  args: string[],
  env: NodeJS.ProcessEnv,
  files: { stdout: string; stderr: string },
): ChildProcess {
  const out = openSync(files.stdout, 'a');
  const err = files.stderr === files.stdout ? out : openSync(files.stderr, 'a');
  try {
    return spawn(process.execPath, ['--import', 'tsx', main, ...args], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', out, err],
    });
  } finally {
    closeSync(out);
    if (err !== out) closeSync(err);
  }
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export function exitOf(child: ChildProcess): Promise<Exit> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: null, signal: null }));
  });
}
