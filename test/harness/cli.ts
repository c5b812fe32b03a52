// Real `unstuck` processes for tests of the command line as a user meets it: started from the
// TypeScript source in a clean environment, their output, exit and duration kept for assertions.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { configReference } from '../../src/config.js';
import { packageRoot } from '../../src/paths.js';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

export interface CliOptions {
  /** On top of a clean environment (no unstuck variables but fast retries); undefined unsets. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** The process is killed after this long; the result says so. */
  timeoutMs?: number;
}

export interface Running {
  child: ChildProcess;
  result: Promise<CliResult>;
  /** What it has written to stderr so far. */
  stderr(): string;
}

const mainScript = join(packageRoot, 'src', 'cli', 'main.ts');
const tsxLoader = import.meta.resolve('tsx');
const children = new Set<ChildProcess>();

function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const { env: name } of configReference) delete env[name];
  delete env.LOG_FORMAT;
  Object.assign(env, {
    LOG_LEVEL: 'warn',
    DB_RETRY_BASE_DELAY: '0.05',
    DB_RETRY_MAX_DELAY: '0.5',
    DB_POOL_SIZE: '4',
  });
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}

/** Starts `unstuck <args>`; `result` settles when it exits (or is killed at the time limit). */
export function spawnCli(
  args: string[],
  { env, cwd = packageRoot, timeoutMs = 60_000 }: CliOptions = {},
): Running {
  const started = Date.now();
  const child = spawn(process.execPath, ['--import', tsxLoader, mainScript, ...args], {
    cwd,
    env: cliEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const result = new Promise<CliResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started, timedOut });
    });
  });
  return { child, result, stderr: () => stderr };
}

/** Runs `unstuck <args>` to its end. */
export const cli = (args: string[], options?: CliOptions) => spawnCli(args, options).result;

/** SIGKILLs every CLI process still running (for a test file's `after`). */
export function killRunningClis(): void {
  for (const child of children) child.kill('SIGKILL');
}

/** What a failed expectation shows: everything the process said. */
export const shown = (r: CliResult) =>
  `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}${r.timedOut ? ' after the time limit' : ''} in ${r.ms} ms\n` +
  `--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

export function assertExit(r: CliResult, code: number, what: string): void {
  assert.equal(r.code, code, `${what}: expected exit ${code}; ${shown(r)}`);
}
