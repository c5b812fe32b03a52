// One chaos run: a fresh server and database, three worker processes, one submitted
// execution; the fault is injected once a seeded share of the files is done, and then the
// system must bring every file to a terminal state by itself within the run's bound.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type Cluster } from './cluster.js';
import type { Fault } from './faults.js';
import { checkInvariants, emptyTally, type Expectation, type Tally } from './invariants.js';
import { allTerminal, lastFinished, progress, workSpan } from './progress.js';
import { random } from './random.js';
import { submit } from './submit.js';
import { waitFor, within } from './wait.js';
import { emptyLogs, summariseLogs, type LogSummary } from './worker-logs.js';
import { WorkerFleet } from './workers.js';
import { createWorkload, defaultWorkload } from './workload.js';

export interface RunOptions {
  fault: Fault;
  seed: number;
  files: number;
  /** The whole run, set-up to check, must fit in this. */
  timeoutMs: number;
  workers?: number;
  /** Keep the logs folder even when the run passed. */
  keep?: boolean;
}

export interface RunResult extends Tally {
  name: string;
  seed: number;
  /** From the end of the fault until the last file was terminal; 0 if none was left. */
  recoverySeconds?: number;
  seconds: number;
  logs: LogSummary;
  notes: string[];
  /** The run's folder (worker logs), kept when the run found a violation. */
  dir: string;
}

export async function runChaos(options: RunOptions): Promise<RunResult> {
  const { fault, seed } = options;
  const started = Date.now();
  const deadline = started + options.timeoutMs;
  const left = () => Math.max(1_000, deadline - Date.now());
  const dir = await mkdtemp(join(tmpdir(), `unstuck-chaos-${fault.name}-${seed}-`));
  const notes: string[] = [];
  const violations: string[] = [];
  const workload = await createWorkload(dir, random(seed, 'workload'), {
    ...defaultWorkload,
    files: options.files,
    seed,
  });
  const expected: Expectation[] = [workload];
  let cluster: Cluster | undefined;
  let fleet: WorkerFleet | undefined;
  let faultEnd: number | undefined;
  try {
    cluster = await within(startCluster(fault.path), left(), 'starting the database');
    const c = cluster;
    fleet = new WorkerFleet({
      databaseUrl: c.workerUrl,
      pgbouncer: c.path === 'pgbouncer',
      dir,
      concurrency: 4,
      startTimeoutMs: left(),
    });
    // Submitted directly: the fault is for the workers, and comes once they are busy.
    const [submission] = await Promise.all([
      submit(workload.workflowFile, c.databaseUrl, false, dir, left()),
      fleet.startMany(options.workers ?? 3),
    ]);
    if (submission.failure) throw new Error(`submission failed: ${submission.failure}`);
    const share = random(seed, 'trigger').between(0.05, 0.2);
    await waitFor(async () => (await progress(c.admin)).done >= share * options.files, {
      timeoutMs: left(),
      intervalMs: 10,
      message: `${Math.round(share * 100)}% of the files to be done before the fault`,
    });
    notes.push(`fault at ${(await progress(c.admin)).done}/${options.files} done`);
    const rng = random(seed, `fault:${fault.name}`);
    const note = (text: string) => notes.push(text);
    await within(fault.inject({ cluster: c, fleet, rng, note }), left(), `fault ${fault.name}`);
    faultEnd = Date.now();
    await waitFor(() => allTerminal(c.admin, options.files), {
      timeoutMs: Math.max(0, deadline - Date.now()),
      intervalMs: 50,
      message: 'every file and execution to be terminal',
    }).catch((error: Error) => violations.push(`I1 run timed out: ${error.message}`));
  } catch (error) {
    violations.push(`harness: ${(error as Error).message}`);
  }
  const outcome = await inspect(cluster, fleet, expected, faultEnd, violations, notes);
  await cluster?.destroy();
  if (violations.length === 0 && !options.keep) await rm(dir, { recursive: true, force: true });
  return {
    name: fault.name,
    seed,
    ...outcome,
    seconds: (Date.now() - started) / 1000,
    notes,
    violations,
    dir,
  };
}

/** After the run: stop the workers, read their logs, check the invariants. */
export async function inspect(
  cluster: Cluster | undefined,
  fleet: WorkerFleet | undefined,
  expected: Expectation[],
  faultEnd: number | undefined,
  violations: string[],
  notes: string[] = [],
): Promise<Omit<Tally, 'violations'> & { logs: LogSummary; recoverySeconds?: number }> {
  let logs: LogSummary = emptyLogs();
  if (fleet) {
    // No writer is left while the tables are checked.
    await fleet.stopAll();
    violations.push(...(await fleet.misbehaved()));
    logs = await summariseLogs(fleet.all.map((w) => w.logFile));
    violations.push(...logs.violations);
  }
  let tally: Tally = emptyTally();
  let recoverySeconds: number | undefined;
  if (cluster) {
    const { admin } = cluster;
    // The database is back by now, unless the fault broke the harness itself.
    tally = await waitFor(() => checkInvariants(admin, expected), {
      timeoutMs: 30_000,
      message: 'the invariant queries',
    }).catch((error: Error) => {
      violations.push(`harness: cannot check the invariants: ${error.message}`);
      return emptyTally();
    });
    violations.push(...tally.violations);
    const span = await workSpan(admin).catch(() => undefined);
    if (span !== undefined) notes.push(`work took ${span.toFixed(1)} s`);
    const last = await lastFinished(admin).catch(() => undefined);
    if (last !== undefined && faultEnd !== undefined) {
      recoverySeconds = Math.max(0, (last - faultEnd) / 1000);
    }
  }
  // I5 once more: a binary file fails for good at its first attempt, so it gets a new one only
  // when a sweep takes back its expired lease; a retried permanent failure would add many more.
  // Countable only when no worker died with log lines still unwritten.
  const killed = fleet?.all.some((w) => w.ending === 'kill') ?? true;
  if (!killed && tally.permanentReattempts > logs.requeued) {
    violations.push(
      `I5 ${tally.permanentReattempts} new attempts of permanently failing files, but sweeps requeued only ${logs.requeued} files`,
    );
  }
  return { ...tally, logs, recoverySeconds };
}
