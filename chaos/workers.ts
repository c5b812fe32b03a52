// The engine's workers as separate OS processes (`unstuck worker`), each logging JSON to its own
// file, so a fault can SIGKILL one and the run can read afterwards what each one saw.
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cliEnv, exitOf, spawnCli, type Exit } from './cli.js';
import { waitFor, within } from './wait.js';

export interface WorkerProcess {
  name: string;
  pid: number;
  logFile: string;
  child: ChildProcess;
  exited: Promise<Exit>;
  /** Set before the harness itself kills or stops it: any other exit is a crash. */
  ending?: 'kill' | 'stop';
}

export interface WorkerFleetOptions {
  databaseUrl: string;
  pgbouncer: boolean;
  dir: string;
  concurrency: number;
  startTimeoutMs?: number;
}

export class WorkerFleet {
  readonly all: WorkerProcess[] = [];
  private started = 0;

  constructor(private readonly options: WorkerFleetOptions) {}

  get live(): WorkerProcess[] {
    return this.all.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
  }

  /** Starts one worker and resolves once it has logged that it started. */
  async start(): Promise<WorkerProcess> {
    const name = `worker-${++this.started}`;
    const logFile = join(this.options.dir, `${name}.log`);
    const { databaseUrl, pgbouncer, concurrency } = this.options;
    const child = spawnCli(
      ['worker', '--concurrency', String(concurrency)],
      cliEnv(databaseUrl, pgbouncer),
      { stdout: logFile, stderr: logFile },
    );
    const worker: WorkerProcess = {
      name,
      pid: child.pid ?? -1,
      logFile,
      child,
      exited: exitOf(child),
    };
    this.all.push(worker);
    let exit: Exit | undefined;
    void worker.exited.then((e) => (exit = e));
    await waitFor(
      async () => {
        if (exit)
          throw new Error(`${name} exited during start (code ${exit.code}, signal ${exit.signal})`);
        return (await readFile(logFile, 'utf8')).includes('"msg":"worker started"');
      },
      {
        timeoutMs: this.options.startTimeoutMs ?? 60_000,
        intervalMs: 50,
        message: `${name} to start`,
      },
    );
    return worker;
  }

  startMany(count: number): Promise<WorkerProcess[]> {
    return Promise.all(Array.from({ length: count }, () => this.start()));
  }

  /** Kills at once, as a crash or the OOM killer would. */
  async kill(worker: WorkerProcess): Promise<void> {
    worker.ending = 'kill';
    worker.child.kill('SIGKILL');
    await within(worker.exited, 10_000, `${worker.name} to die of SIGKILL`);
  }

  /** A clean stop (SIGTERM: hand back, finish, exit), SIGKILL after the bound. */
  async stopAll(timeoutMs = 30_000): Promise<void> {
    const live = this.live;
    for (const w of live) {
      w.ending = 'stop';
      w.child.kill('SIGTERM');
    }
    await Promise.all(
      live.map((w) =>
        within(w.exited, timeoutMs, `${w.name} to stop`).catch(async () => {
          w.child.kill('SIGKILL');
          await w.exited;
        }),
      ),
    );
  }

  /**
   * Workers that exited without the harness asking them to (a crash), or that did not stop
   * cleanly when asked on a healthy database: both are findings.
   */
  async misbehaved(): Promise<string[]> {
    const found: string[] = [];
    for (const w of this.all) {
      const { exitCode: code, signalCode: signal } = w.child;
      if (w.ending === 'kill' || (code === null && signal === null)) continue;
      if (w.ending === 'stop' && code === 0) continue;
      const what = w.ending === 'stop' ? 'did not stop cleanly' : 'exited by itself';
      const log = await readFile(w.logFile, 'utf8').catch(() => '');
      const tail = log.trim().split('\n').slice(-3).join(' | ');
      found.push(`${w.name} (pid ${w.pid}) ${what} (code ${code}, signal ${signal}): ${tail}`);
    }
    return found;
  }
}
