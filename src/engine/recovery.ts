import type { Database } from '../db/database.js';
import { applyCounts, finalStatus } from './counters.js';

export interface SweepReport {
  /** Expired files given a new attempt. */
  requeued: number;
  /** Expired files that had no attempts left (ERROR) or whose execution was stopped (STOPPED). */
  ended: number;
  /** Executions given their final status. */
  finalized: number;
}

/**
 * Takes back files whose lease expired (their worker died, or lost the database longer than
 * the lease), and finalizes any execution whose files are all terminal. Safe in many
 * processes at once: each expired row is taken by exactly one sweeper (SKIP LOCKED).
 */
export async function sweep(db: Database, limit = 1000): Promise<SweepReport> {
  return db.transaction(
    async (tx) => {
      const { rows } = await tx.query<{ status: string }>(
        `WITH expired AS (
           SELECT id FROM unstuck.file_executions
           WHERE status = 'EXECUTING' AND lease_expires_at < now()
           ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
         ), moved AS (
           UPDATE unstuck.file_executions f SET
             status = CASE WHEN e.stop_requested THEN 'STOPPED'
                           WHEN f.attempt < f.max_attempts THEN 'PENDING' ELSE 'ERROR' END,
             attempt = CASE WHEN NOT e.stop_requested AND f.attempt < f.max_attempts
                            THEN f.attempt + 1 ELSE f.attempt END,
             error = 'lease expired', lease_owner = NULL, lease_expires_at = NULL,
             available_at = now(),
             finished_at = CASE WHEN e.stop_requested OR f.attempt >= f.max_attempts THEN now() END
           FROM expired x, unstuck.workflow_executions e
           WHERE f.id = x.id AND e.id = f.execution_id
           RETURNING f.execution_id, f.status
         ), counts AS (${applyCounts('moved')})
         SELECT status FROM moved`,
        [limit],
      );
      const finalized = await tx.query(
        `UPDATE unstuck.workflow_executions e SET finished_at = now(), status = ${finalStatus('e.completed')}
         WHERE status IN ('PENDING', 'EXECUTING') AND completed + failed + stopped = total`,
      );
      const requeued = rows.filter((r) => r.status === 'PENDING').length;
      return { requeued, ended: rows.length - requeued, finalized: finalized.rowCount ?? 0 };
    },
    { name: 'recovery sweep' },
  );
}
