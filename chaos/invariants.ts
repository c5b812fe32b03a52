// The invariants, checked straight from the tables once every worker has stopped:
// I1 every file terminal, I2 each execution's counters and status equal what its files say,
// I3/I4 exactly one result per COMPLETED file (from the attempt that finished it) and none for
// any other, plus each file's expected outcome and how often its step really ran.
import { readFile } from 'node:fs/promises';
import type pg from 'pg';
import { expectedStatus, type Kind } from './workload.js';

/** What one submission should have produced. */
export interface Expectation {
  folder: string;
  files: Map<string, Kind>;
  invocationLog: string;
}

export interface Tally {
  files: number;
  completed: number;
  error: number;
  stuck: number;
  lost: number;
  duplicated: number;
  /** Step calls beyond the ones a file needs (a lease taken over, a worker killed mid-step). */
  reruns: number;
  /** (file, attempt) pairs whose step ran more than once: two workers held the same attempt. */
  twins: number;
  /** New attempts of binary (permanently failing) files: each must be a recovered lease. */
  permanentReattempts: number;
  errorReasons: Record<string, number>;
  violations: string[];
}

interface FileRow {
  folder: string;
  execution_id: string;
  path: string;
  status: string;
  attempt: number;
  max_attempts: number;
  error: string | null;
  results: number;
  result_attempt: number | null;
}

interface ExecutionRow {
  id: string;
  folder: string;
  status: string;
  total: number;
  completed: number;
  failed: number;
  stopped: number;
  stop_requested: boolean;
  finished: boolean;
  n: number;
  c: number;
  e: number;
  s: number;
  open: number;
}

/** A run's counts before anything was counted (also what a run that never got going reports). */
export function emptyTally(): Tally {
  return {
    files: 0,
    completed: 0,
    error: 0,
    stuck: 0,
    lost: 0,
    duplicated: 0,
    reruns: 0,
    twins: 0,
    permanentReattempts: 0,
    errorReasons: {},
    violations: [],
  };
}

export async function checkInvariants(admin: pg.Pool, expected: Expectation[]): Promise<Tally> {
  const tally = emptyTally();
  const problems = new Map<string, string[]>();
  const flag = (what: string, example: string) => {
    const list = problems.get(what) ?? [];
    list.push(example);
    problems.set(what, list);
  };
  const executions = await executionRows(admin);
  checkCounters(executions, flag);
  const byFolder = new Map<string, ExecutionRow[]>();
  for (const e of executions) byFolder.set(e.folder, [...(byFolder.get(e.folder) ?? []), e]);
  const files = await fileRows(admin);
  for (const want of expected) {
    const runs = byFolder.get(want.folder) ?? [];
    byFolder.delete(want.folder);
    tally.files += want.files.size;
    if (runs.length === 0) {
      tally.lost += want.files.size;
      flag('I3 submission lost (no execution)', want.folder);
      continue;
    }
    if (runs.length > 1) {
      tally.duplicated += runs.length - 1;
      flag(
        'I4 one submission made several executions',
        `${want.folder}: ${runs.map((r) => r.id).join(', ')}`,
      );
    }
    for (const run of runs) {
      const rows = files.filter((f) => f.execution_id === run.id);
      checkFiles(rows, want, tally, flag);
    }
    await checkInvocations(
      want,
      files.filter((f) => f.folder === want.folder),
      tally,
    );
  }
  for (const [folder, runs] of byFolder)
    flag('executions nobody submitted', `${folder}: ${runs.length}`);
  for (const [what, examples] of problems) {
    const shown = examples.slice(0, 3).join('; ');
    tally.violations.push(
      `${what}: ${examples.length} (${shown}${examples.length > 3 ? '; ...' : ''})`,
    );
  }
  return tally;
}

function checkCounters(executions: ExecutionRow[], flag: (what: string, example: string) => void) {
  for (const e of executions) {
    const counted = `total ${e.total}/${e.n} completed ${e.completed}/${e.c} failed ${e.failed}/${e.e} stopped ${e.stopped}/${e.s}`;
    if (e.total !== e.n || e.completed !== e.c || e.failed !== e.e || e.stopped !== e.s) {
      flag('I2 counters differ from the files (row/files)', `execution ${e.id}: ${counted}`);
    }
    const status =
      e.open > 0 ? undefined : e.stop_requested ? 'STOPPED' : e.c === 0 ? 'ERROR' : 'COMPLETED';
    if (
      status ? e.status !== status || !e.finished : !['PENDING', 'EXECUTING'].includes(e.status)
    ) {
      flag(
        'I2 execution status differs from its files',
        `execution ${e.id} is ${e.status}${e.finished ? ' (finished)' : ''} with ${e.open} open files, ${counted}`,
      );
    }
  }
}

function checkFiles(
  rows: FileRow[],
  want: Expectation,
  tally: Tally,
  flag: (what: string, example: string) => void,
) {
  const seen = new Set<string>();
  for (const f of rows) {
    const kind = want.files.get(f.path);
    if (seen.has(f.path)) {
      tally.duplicated++;
      flag('I4 file listed twice in one execution', f.path);
    }
    seen.add(f.path);
    if (f.status === 'PENDING' || f.status === 'EXECUTING') {
      tally.stuck++;
      flag('I1 file not terminal', `${f.path} ${f.status} attempt ${f.attempt}`);
    }
    if (f.status === 'COMPLETED') tally.completed++;
    if (f.status === 'ERROR') {
      tally.error++;
      const reason = reasonOf(f.error);
      tally.errorReasons[reason] = (tally.errorReasons[reason] ?? 0) + 1;
      if (!f.error) flag('ERROR without a reason', f.path);
    }
    if (f.status === 'COMPLETED' && f.results === 0) {
      tally.lost++;
      flag('I3 COMPLETED file without a result', f.path);
    }
    if (f.results > 1 || (f.results > 0 && f.status !== 'COMPLETED')) {
      tally.duplicated++;
      flag('I3/I4 result where none belongs', `${f.path} ${f.status} with ${f.results} results`);
    }
    if (f.status === 'COMPLETED' && f.result_attempt !== null && f.result_attempt !== f.attempt) {
      tally.duplicated++;
      flag(
        'I4 result from another attempt',
        `${f.path}: attempt ${f.attempt}, result of ${f.result_attempt}`,
      );
    }
    if (!kind) {
      flag('file nobody submitted', f.path);
      continue;
    }
    if (kind === 'binary') tally.permanentReattempts += f.attempt - 1;
    if (f.status === 'COMPLETED' || f.status === 'ERROR') {
      const outcome =
        f.status === expectedStatus(kind) && (kind !== 'binary' || /binary/.test(f.error ?? ''));
      if (!outcome && f.error === 'lease expired' && f.attempt >= f.max_attempts) {
        flag(
          'attempts used up by expired leases (tune maxAttempts)',
          `${f.path} attempt ${f.attempt}`,
        );
      } else if (!outcome) {
        flag('unexpected outcome', `${f.path} ${f.status} attempt ${f.attempt}: ${f.error ?? ''}`);
      }
    }
    if (
      kind === 'binary' &&
      f.status === 'ERROR' &&
      f.attempt >= f.max_attempts &&
      f.max_attempts > 1
    ) {
      flag('I5 permanent failure retried until attempts ran out', `${f.path} attempt ${f.attempt}`);
    }
  }
  for (const path of want.files.keys()) {
    if (!seen.has(path)) {
      tally.lost++;
      flag('I3 file missing from its execution', path);
    }
  }
}

/** Step calls from the workload's log: each file needs one (a flaky one two). */
async function checkInvocations(want: Expectation, rows: FileRow[], tally: Tally): Promise<void> {
  const text = await readFile(want.invocationLog, 'utf8').catch(() => '');
  const calls = new Map<string, number>();
  const perAttempt = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [path, attempt] = line.split(' ');
    if (!path || !attempt) continue;
    calls.set(path, (calls.get(path) ?? 0) + 1);
    const key = `${path} ${attempt}`;
    perAttempt.set(key, (perAttempt.get(key) ?? 0) + 1);
  }
  for (const f of rows) {
    const kind = want.files.get(f.path);
    const needed = kind === 'flaky' ? 2 : 1;
    tally.reruns += Math.max(0, (calls.get(f.path) ?? 0) - needed);
  }
  for (const n of perAttempt.values()) if (n > 1) tally.twins++;
}

/** Error texts grouped: the variable parts (paths, numbers) dropped. */
function reasonOf(error: string | null): string {
  if (!error) return '(none)';
  if (/binary/.test(error)) return 'binary file';
  return error
    .replace(/\(.*?\)|\d+/g, '')
    .slice(0, 60)
    .trim();
}

async function executionRows(admin: pg.Pool): Promise<ExecutionRow[]> {
  const { rows } = await admin.query<ExecutionRow>(
    `SELECT e.id::text, w.definition #>> '{source,path}' AS folder, e.status, e.total, e.completed,
            e.failed, e.stopped, e.stop_requested, e.finished_at IS NOT NULL AS finished,
            count(f.id)::int AS n,
            count(*) FILTER (WHERE f.status = 'COMPLETED')::int AS c,
            count(*) FILTER (WHERE f.status = 'ERROR')::int AS e,
            count(*) FILTER (WHERE f.status = 'STOPPED')::int AS s,
            count(*) FILTER (WHERE f.status IN ('PENDING', 'EXECUTING'))::int AS open
     FROM unstuck.workflow_executions e
     JOIN unstuck.workflows w ON w.id = e.workflow_id
     LEFT JOIN unstuck.file_executions f ON f.execution_id = e.id
     GROUP BY e.id, w.definition ORDER BY e.id`,
  );
  return rows;
}

async function fileRows(admin: pg.Pool): Promise<FileRow[]> {
  const { rows } = await admin.query<FileRow>(
    `SELECT w.definition #>> '{source,path}' AS folder, f.execution_id::text, f.path, f.status,
            f.attempt, f.max_attempts, f.error, count(r.file_execution_id)::int AS results,
            min((r.result #>> '{work,attempt}')::int) AS result_attempt
     FROM unstuck.file_executions f
     JOIN unstuck.workflow_executions e ON e.id = f.execution_id
     JOIN unstuck.workflows w ON w.id = e.workflow_id
     LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     GROUP BY f.id, w.definition ORDER BY f.id`,
  );
  return rows;
}
