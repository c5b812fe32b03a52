// Submitting an execution the way a user would: `unstuck submit --workflow file --json`.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cliEnv, exitOf, spawnCli } from './cli.js';
import { within } from './wait.js';

export interface Submission {
  executionId?: string;
  /** Why it failed, when it did (exit code and the log's last lines). */
  failure?: string;
}

export async function submit(
  workflowFile: string,
  databaseUrl: string,
  pgbouncer: boolean,
  dir: string,
  timeoutMs: number,
): Promise<Submission> {
  const stdout = join(dir, 'submit.out');
  const stderr = join(dir, 'submit.log');
  const child = spawnCli(
    ['submit', '--workflow', workflowFile, '--json'],
    cliEnv(databaseUrl, pgbouncer),
    {
      stdout,
      stderr,
    },
  );
  const exit = await within(exitOf(child), timeoutMs, 'unstuck submit').catch((error: Error) => {
    child.kill('SIGKILL');
    return { code: null, signal: null, timedOut: error.message };
  });
  const out = await readFile(stdout, 'utf8').catch(() => '');
  if (exit.code === 0) {
    try {
      return { executionId: String((JSON.parse(out) as { executionId: unknown }).executionId) };
    } catch {
      return { failure: `submit printed no JSON: ${out.slice(0, 200)}` };
    }
  }
  const log = await readFile(stderr, 'utf8').catch(() => '');
  const why = 'timedOut' in exit ? exit.timedOut : `exit code ${exit.code}, signal ${exit.signal}`;
  return { failure: `${why}; ${log.trim().split('\n').slice(-3).join(' | ')}` };
}
