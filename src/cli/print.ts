import type { ExecutionSummary, FileExecutionRow } from '../engine/executions.js';

/** Human output on stdout; with --json, one JSON document instead. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
}

export function summaryLine(s: ExecutionSummary): string {
  const seconds =
    s.startedAt && s.finishedAt
      ? (s.finishedAt.getTime() - s.startedAt.getTime()) / 1000
      : undefined;
  const timing =
    seconds === undefined
      ? ''
      : ` in ${seconds.toFixed(1)} s (${(s.total / Math.max(seconds, 0.001)).toFixed(0)} files/s)`;
  return (
    `execution ${s.id} (${s.workflow}) ${s.status}: ${s.completed} completed, ${s.failed} failed, ` +
    `${s.stopped} stopped of ${s.total} files${timing}`
  );
}

export function executionsTable(rows: ExecutionSummary[]): string {
  if (rows.length === 0) return 'no executions yet';
  return table(
    ['id', 'workflow', 'status', 'total', 'completed', 'failed', 'stopped', 'created'],
    rows.map((r) => [
      r.id,
      r.workflow,
      r.status,
      r.total,
      r.completed,
      r.failed,
      r.stopped,
      r.createdAt.toISOString(),
    ]),
  );
}

export function filesTable(rows: FileExecutionRow[]): string {
  if (rows.length === 0) return 'no files';
  return table(
    ['id', 'status', 'attempt', 'path', 'error'],
    rows.map((r) => [
      r.id,
      r.status,
      r.attempt,
      JSON.stringify(r.path).slice(1, -1),
      r.error ?? '',
    ]),
  );
}

/** The demo's view of what the steps found: counts and extracted fields per file. */
export function resultsTable(rows: FileExecutionRow[]): string {
  const field = (r: FileExecutionRow, step: string, key: string) => {
    const value = (r.result as Record<string, Record<string, unknown> | null> | null)?.[step]?.[
      key
    ];
    return Array.isArray(value) ? value.join(' ') : String(value ?? '');
  };
  return table(
    ['path', 'lines', 'words', 'title', 'emails'],
    rows.map((r) => [
      r.path,
      field(r, 'count', 'lines'),
      field(r, 'count', 'words'),
      field(r, 'extract', 'title'),
      field(r, 'extract', 'emails'),
    ]),
  );
}

function table(header: string[], rows: unknown[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => String(c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
