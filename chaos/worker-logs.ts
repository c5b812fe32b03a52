// What the workers' JSON logs say about a run: retries by error class (I5: never "permanent"),
// database errors the workers gave up on or that were permanent, fencing and lease recovery.
import { readFile } from 'node:fs/promises';
import { classify } from '../src/db/errors.js';

export interface LogSummary {
  retries: Record<string, number>;
  giveUps: number;
  /** Files the sweeps gave a new attempt (requeued) or ended (ERROR/STOPPED). */
  requeued: number;
  ended: number;
  fencedOff: number;
  leaseLost: number;
  /** Idle pooled connections a fault killed (no statement in flight, nothing to retry). */
  idleLost: number;
  violations: string[];
}

interface Line {
  level?: number;
  msg?: string;
  class?: string;
  op?: string;
  err?: unknown;
  files?: unknown[];
  requeued?: number;
  ended?: number;
}

export function emptyLogs(): LogSummary {
  return {
    retries: {},
    giveUps: 0,
    requeued: 0,
    ended: 0,
    fencedOff: 0,
    leaseLost: 0,
    idleLost: 0,
    violations: [],
  };
}

export async function summariseLogs(files: string[]): Promise<LogSummary> {
  const summary = emptyLogs();
  const permanentRetries: string[] = [];
  const permanentErrors: string[] = [];
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const raw of text.split('\n')) {
      const line = parse(raw);
      if (!line?.msg) continue;
      if (line.msg === 'database operation failed; retrying') {
        const cls = line.class ?? '?';
        summary.retries[cls] = (summary.retries[cls] ?? 0) + 1;
        if (cls === 'permanent') permanentRetries.push(`${line.op}: ${String(line.err)}`);
      } else if (line.msg.startsWith('fenced off')) {
        summary.fencedOff += line.files?.length ?? 0;
      } else if (line.msg === 'idle database connection lost') {
        summary.idleLost++;
      } else if (line.msg.startsWith('lease lost')) {
        summary.leaseLost += line.files?.length ?? 0;
      } else if (line.msg === 'recovered expired leases') {
        summary.requeued += line.requeued ?? 0;
        summary.ended += line.ended ?? 0;
      } else if (/gave up after/.test(line.msg)) {
        summary.giveUps++;
      } else if ((line.level ?? 0) >= 50 && line.err) {
        const problem = permanentProblem(line.err);
        if (problem) permanentErrors.push(`${line.msg}: ${problem}`);
      }
    }
  }
  if (permanentRetries.length > 0) {
    summary.violations.push(
      `I5 permanent error retried: ${permanentRetries.length} (${permanentRetries.slice(0, 2).join('; ')})`,
    );
  }
  if (permanentErrors.length > 0) {
    summary.violations.push(
      `permanent database error in a worker: ${permanentErrors.length} (${permanentErrors.slice(0, 2).join('; ')})`,
    );
  }
  return summary;
}

function parse(raw: string): Line | undefined {
  if (!raw.startsWith('{')) return undefined;
  try {
    return JSON.parse(raw) as Line;
  } catch {
    return undefined; // a line cut short by SIGKILL
  }
}

/**
 * A logged error that no fault of the connection explains: faults only break connections, so a
 * permanent error (a constraint, the transition guard, bad SQL) under them is a defect.
 */
function permanentProblem(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as { type?: string; message?: string; code?: string };
  if (e.type === 'DatabaseUnavailableError') return undefined; // a give-up, counted above
  const error = Object.assign(new Error(e.message ?? ''), { code: e.code });
  return classify(error).class === 'permanent'
    ? `${e.code ?? ''} ${e.message ?? ''}`.trim()
    : undefined;
}
