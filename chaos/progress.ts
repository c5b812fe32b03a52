// Watching a run from outside, on the direct connection: how many files are done, whether
// anything is still open, and when the last file became terminal.
import type pg from 'pg';

export interface Progress {
  files: number;
  done: number;
  open: number;
  openExecutions: number;
}

export async function progress(admin: pg.Pool): Promise<Progress> {
  const { rows } = await admin.query<Progress>(
    `SELECT (SELECT count(*)::int FROM unstuck.file_executions) AS files,
            (SELECT count(*)::int FROM unstuck.file_executions
              WHERE status IN ('COMPLETED', 'ERROR', 'STOPPED')) AS done,
            (SELECT count(*)::int FROM unstuck.file_executions
              WHERE status IN ('PENDING', 'EXECUTING')) AS open,
            (SELECT count(*)::int FROM unstuck.workflow_executions
              WHERE status IN ('PENDING', 'EXECUTING')) AS "openExecutions"`,
  );
  return rows[0]!;
}

/** Every submitted file is in the table and terminal, and so is every execution. */
export async function allTerminal(admin: pg.Pool, expectedFiles: number): Promise<boolean> {
  const p = await progress(admin);
  return p.files >= expectedFiles && p.open === 0 && p.openExecutions === 0;
}

/** When (epoch ms, the server's clock on this same machine) the last file became terminal. */
export async function lastFinished(admin: pg.Pool): Promise<number | undefined> {
  const { rows } = await admin.query<{ at: number | null }>(
    'SELECT extract(epoch FROM max(finished_at))::float8 * 1000 AS at FROM unstuck.file_executions',
  );
  return rows[0]?.at ?? undefined;
}

/** Seconds from the first claim to the last terminal file: how long the work took. */
export async function workSpan(admin: pg.Pool): Promise<number | undefined> {
  const { rows } = await admin.query<{ span: number | null }>(
    `SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 AS span
     FROM unstuck.file_executions`,
  );
  return rows[0]?.span ?? undefined;
}
