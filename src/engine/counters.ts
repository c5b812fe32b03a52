/**
 * The fan-in, as a SQL fragment shared by every statement that moves file executions into or
 * out of a terminal state. It adds the moved rows to their execution's counters in the same
 * statement, and when the counters reach the total it gives the execution its final status.
 * Concurrent writers serialise on the execution row and PostgreSQL re-evaluates against the
 * latest version, so exactly one of them sees the counters reach the total: that one reports
 * `finalized`.
 *
 * `moved` names a CTE returning (execution_id, status) of rows that just became terminal.
 */
/** An execution's status once all its files are terminal (alias e, its completed count given). */
export function finalStatus(completed: string): string {
  return `CASE WHEN e.stop_requested THEN 'STOPPED' WHEN ${completed} = 0 THEN 'ERROR' ELSE 'COMPLETED' END`;
}

export function applyCounts(moved: string): string {
  const done = 'e.completed + e.failed + e.stopped';
  const delta = 'd.completed + d.failed + d.stopped';
  return `UPDATE unstuck.workflow_executions e SET
      completed = e.completed + d.completed,
      failed = e.failed + d.failed,
      stopped = e.stopped + d.stopped,
      status = CASE WHEN ${done} + ${delta} < e.total THEN e.status
                    ELSE ${finalStatus('e.completed + d.completed')} END,
      finished_at = CASE WHEN ${done} + ${delta} = e.total THEN now() END
    FROM (SELECT execution_id,
                 count(*) FILTER (WHERE status = 'COMPLETED')::int AS completed,
                 count(*) FILTER (WHERE status = 'ERROR')::int AS failed,
                 count(*) FILTER (WHERE status = 'STOPPED')::int AS stopped
          FROM ${moved} WHERE status IN ('COMPLETED', 'ERROR', 'STOPPED') GROUP BY execution_id) d
    WHERE e.id = d.execution_id
    RETURNING e.id, e.status, ${done} = e.total AND (${done}) - (${delta}) < e.total AS finalized`;
}
