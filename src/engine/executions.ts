import { randomUUID } from 'node:crypto';
import type { Database, Queryable, QueryOptions } from '../db/database.js';
import { listFiles } from '../workflow/local-folder-source.js';
import type { ResolvedWorkflow } from '../workflow/definition.js';
import { applyCounts } from './counters.js';
import { saveWorkflow } from './workflows.js';

/** Whose data a call may see: every query below is confined to one organization. */
export interface Scope {
  organizationId: string;
}

export type Status = 'PENDING' | 'EXECUTING' | 'COMPLETED' | 'ERROR' | 'STOPPED';
export const terminal: readonly Status[] = ['COMPLETED', 'ERROR', 'STOPPED'];

export interface ExecutionSummary {
  id: string;
  workflow: string;
  status: Status;
  total: number;
  completed: number;
  failed: number;
  stopped: number;
  stopRequested: boolean;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

// Work that must not be lost waits out a failover; the listing re-runs whole if it must retry.
export const durable = { budgetMs: 10 * 60_000, maxRetries: 1000 };

/** The organization a name stands for (the CLI's is "default"); created when missing. */
export async function organizationScope(db: Database, name = 'default'): Promise<Scope> {
  const { rows } = await db.query<{ id: string }>(
    `WITH new AS (INSERT INTO unstuck.organizations (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
     SELECT id FROM new UNION ALL SELECT id FROM unstuck.organizations WHERE name = $1`,
    [name],
    { name: 'organization', idempotent: true },
  );
  return { organizationId: rows[0]!.id };
}

/**
 * Creates an execution with one PENDING file execution per listed file, all in one
 * transaction: a crash or outage mid-listing leaves nothing half-written, and a retry lists
 * the folder again from the start. Files the listing refused start as ERROR with the reason.
 */
export async function submitExecution(
  db: Database,
  scope: Scope,
  workflow: ResolvedWorkflow,
): Promise<{ executionId: string; total: number }> {
  const workflowId = await saveWorkflow(db, scope, workflow.definition);
  const { maxAttempts, leaseSeconds } = workflow.definition.options;
  // Chosen once, outside the transaction: a re-run after a COMMIT whose reply was lost finds
  // what the first run made, rather than submitting the same files a second time.
  const submissionKey = randomUUID();
  return db.transaction(
    async (tx) => {
      const earlier = await tx.query<{ id: string; total: number }>(
        'SELECT id, total FROM unstuck.workflow_executions WHERE submission_key = $1',
        [submissionKey],
      );
      if (earlier.rows[0]) return { executionId: earlier.rows[0].id, total: earlier.rows[0].total };
      const { rows } = await tx.query<{ id: string }>(
        `INSERT INTO unstuck.workflow_executions (organization_id, workflow_id, submission_key)
         VALUES ($1, $2, $3) RETURNING id`,
        [scope.organizationId, workflowId, submissionKey],
      );
      const executionId = rows[0]!.id;
      let total = 0;
      let failed = 0;
      for await (const batch of listFiles(workflow.source, { batchSize: 1000 })) {
        await insertFiles(tx, scope, executionId, batch, maxAttempts, leaseSeconds);
        total += batch.length;
        failed += batch.filter((f) => f.problem).length;
      }
      await tx.query(
        `UPDATE unstuck.workflow_executions e SET total = $2::int, failed = $3::int,
           status = CASE WHEN $3::int < $2::int THEN 'PENDING' WHEN $2::int = 0 THEN 'COMPLETED' ELSE 'ERROR' END,
           finished_at = CASE WHEN $3::int = $2::int THEN now() END
         WHERE id = $1`,
        [executionId, total, failed],
      );
      return { executionId, total };
    },
    { name: 'submit execution', retry: durable },
  );
}

function insertFiles(
  tx: Queryable,
  scope: Scope,
  executionId: string,
  batch: { path: string; size: number; problem?: string }[],
  maxAttempts: number,
  leaseSeconds: number,
) {
  return tx.query(
    `INSERT INTO unstuck.file_executions
       (organization_id, execution_id, path, size_bytes, status, error, finished_at, max_attempts, lease_seconds)
     SELECT $1, $2, b.path, b.size, CASE WHEN b.problem IS NULL THEN 'PENDING' ELSE 'ERROR' END,
            b.problem, CASE WHEN b.problem IS NOT NULL THEN now() END, $3, $4
     FROM unnest($5::text[], $6::bigint[], $7::text[]) AS b(path, size, problem)`,
    [
      scope.organizationId,
      executionId,
      maxAttempts,
      leaseSeconds,
      batch.map((f) => f.path),
      batch.map((f) => f.size),
      batch.map((f) => f.problem ?? null),
    ],
  );
}

const summaryColumns = `e.id, w.name AS workflow, e.status, e.total, e.completed, e.failed, e.stopped,
  e.stop_requested AS "stopRequested", e.created_at AS "createdAt", e.started_at AS "startedAt",
  e.finished_at AS "finishedAt"`;

/** `retry` lets a caller that is waiting anyway (e.g. for the execution to end) ride out an outage. */
export async function getExecution(
  db: Database,
  scope: Scope,
  id: string,
  retry?: QueryOptions['retry'],
): Promise<ExecutionSummary | undefined> {
  const { rows } = await db.query<ExecutionSummary>(
    `SELECT ${summaryColumns} FROM unstuck.workflow_executions e JOIN unstuck.workflows w ON w.id = e.workflow_id
     WHERE e.id = $1 AND e.organization_id = $2`,
    [id, scope.organizationId],
    { name: 'get execution', idempotent: true, retry },
  );
  return rows[0];
}

export async function listExecutions(
  db: Database,
  scope: Scope,
  limit = 20,
): Promise<ExecutionSummary[]> {
  const { rows } = await db.query<ExecutionSummary>(
    `SELECT ${summaryColumns} FROM unstuck.workflow_executions e JOIN unstuck.workflows w ON w.id = e.workflow_id
     WHERE e.organization_id = $1 ORDER BY e.id DESC LIMIT $2`,
    [scope.organizationId, limit],
    { name: 'list executions', idempotent: true },
  );
  return rows;
}

export interface FileExecutionRow {
  id: string;
  path: string;
  status: Status;
  attempt: number;
  sizeBytes: number;
  sha256: string | null;
  error: string | null;
  stepTimings: Record<string, number> | null;
  startedAt: Date | null;
  finishedAt: Date | null;
  result: unknown;
}

export async function listFileExecutions(
  db: Database,
  scope: Scope,
  executionId: string,
  status?: Status,
): Promise<FileExecutionRow[]> {
  const { rows } = await db.query<FileExecutionRow>(
    `SELECT f.id, f.path, f.status, f.attempt, f.size_bytes::float8 AS "sizeBytes", f.sha256, f.error,
            f.step_timings AS "stepTimings", f.started_at AS "startedAt", f.finished_at AS "finishedAt", r.result
     FROM unstuck.file_executions f LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     WHERE f.execution_id = $1 AND f.organization_id = $2 AND ($3::text IS NULL OR f.status = $3)
     ORDER BY f.path`,
    [executionId, scope.organizationId, status ?? null],
    { name: 'list file executions', idempotent: true },
  );
  return rows;
}

/**
 * Requests a stop: PENDING files become STOPPED at once; EXECUTING ones become STOPPED when
 * their step returns or their lease expires, and then the execution is STOPPED.
 */
export async function stopExecution(
  db: Database,
  scope: Scope,
  id: string,
): Promise<ExecutionSummary | undefined> {
  await db.transaction(
    async (tx) => {
      const { rowCount } = await tx.query(
        `UPDATE unstuck.workflow_executions SET stop_requested = true
         WHERE id = $1 AND organization_id = $2 AND status IN ('PENDING', 'EXECUTING')`,
        [id, scope.organizationId],
      );
      if (!rowCount) return;
      await tx.query(
        `WITH moved AS (
           UPDATE unstuck.file_executions SET status = 'STOPPED', finished_at = now()
           WHERE execution_id = $1 AND status = 'PENDING' RETURNING execution_id, status
         ) ${applyCounts('moved')}`,
        [id],
      );
    },
    { name: 'stop execution' },
  );
  return getExecution(db, scope, id);
}

/** Gives every ERROR file of an execution a new attempt (and a fresh attempt budget). */
export async function retryExecution(db: Database, scope: Scope, id: string): Promise<number> {
  return db.transaction(
    async (tx) => {
      const { rows } = await tx.query<{ stop_requested: boolean }>(
        'SELECT stop_requested FROM unstuck.workflow_executions WHERE id = $1 AND organization_id = $2 FOR UPDATE',
        [id, scope.organizationId],
      );
      if (!rows[0] || rows[0].stop_requested) return 0;
      const { rowCount } = await tx.query(
        `UPDATE unstuck.file_executions f
         SET status = 'PENDING', attempt = f.attempt + 1, error = NULL, finished_at = NULL,
             available_at = now(), max_attempts = f.attempt + (w.definition #>> '{options,maxAttempts}')::int
         FROM unstuck.workflow_executions e JOIN unstuck.workflows w ON w.id = e.workflow_id
         WHERE f.execution_id = $1 AND f.status = 'ERROR' AND e.id = f.execution_id`,
        [id],
      );
      const retried = rowCount ?? 0;
      if (retried > 0) {
        await tx.query(
          `UPDATE unstuck.workflow_executions SET failed = failed - $2, status = 'EXECUTING', finished_at = NULL
           WHERE id = $1`,
          [id, retried],
        );
      }
      return retried;
    },
    { name: 'retry execution' },
  );
}
