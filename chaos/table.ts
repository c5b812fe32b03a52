// The report: one row per run, then what each failing run found and where its logs are.
import type { RunResult } from './run.js';

const columns: [string, (r: RunResult) => string][] = [
  ['fault', (r) => r.name],
  ['seed', (r) => String(r.seed)],
  ['files', (r) => String(r.files)],
  ['completed', (r) => String(r.completed)],
  ['error', (r) => String(r.error)],
  ['stuck', (r) => String(r.stuck)],
  ['lost', (r) => String(r.lost)],
  ['duplicated', (r) => String(r.duplicated)],
  ['recovery s', (r) => (r.recoverySeconds === undefined ? '-' : r.recoverySeconds.toFixed(1))],
  ['db retries', (r) => String(Object.values(r.logs.retries).reduce((a, b) => a + b, 0))],
  ['expired', (r) => String(r.logs.requeued + r.logs.ended)],
  ['fenced', (r) => String(r.logs.fencedOff)],
  ['reruns', (r) => String(r.reruns)],
  ['twins', (r) => String(r.twins)],
  ['run s', (r) => r.seconds.toFixed(0)],
  ['result', (r) => (r.violations.length === 0 ? 'ok' : 'VIOLATION')],
];

export const legend =
  'expired: leases taken back by a sweep; fenced: late results dropped by the compare-and-set; ' +
  'reruns: step calls beyond what a file needs; twins: one attempt run by two workers';

export function header(): string {
  return row(columns.map(([name]) => name));
}

export function line(result: RunResult): string {
  return row(columns.map(([, cell]) => cell(result)));
}

const widths = columns.map(([name]) => Math.max(name.length, name === 'fault' ? 25 : 5));

function row(cells: string[]): string {
  return `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
}

export function table(results: RunResult[]): string {
  const rule = row(widths.map((w) => '-'.repeat(w)));
  return [header(), rule, ...results.map(line)].join('\n');
}

/** The details a reader needs for each run: what the fault did, and every violation. */
export function details(result: RunResult): string {
  const lines = [`${result.name} seed ${result.seed}: ${result.notes.join('; ')}`];
  const reasons = Object.entries(result.errorReasons).map(([reason, n]) => `${n} ${reason}`);
  if (reasons.length > 0) lines.push(`  ERROR files: ${reasons.join(', ')}`);
  const retries = Object.entries(result.logs.retries).map(([cls, n]) => `${n} ${cls}`);
  if (retries.length > 0) lines.push(`  database retries by class: ${retries.join(', ')}`);
  if (result.logs.idleLost > 0) lines.push(`  idle connections lost: ${result.logs.idleLost}`);
  if (result.logs.giveUps > 0) lines.push(`  gave up: ${result.logs.giveUps}`);
  for (const v of result.violations) lines.push(`  VIOLATION ${v}`);
  if (result.violations.length > 0) lines.push(`  logs: ${result.dir}`);
  return lines.join('\n');
}
