import type { Database } from '../db/database.js';
import { applyCounts } from './counters.js';

/**
 * The file-execution rows as a job queue: claim, heartbeat, finish and hand back. Every
 * transition is a compare-and-set on (status EXECUTING, lease owner, attempt), so a late
 * worker whose lease was taken over, or a re-run of a transaction whose COMMIT did land,
 * changes nothing.
 */

export interface ClaimedFile {
  id: string;
  executionId: string;
  workflowId: string;
  path: string;
  sizeBytes: number;
  attempt: number;
  maxAttempts: number;
  leaseSeconds: number;
}

/** Claims up to `limit` available PENDING files, oldest first, skipping rows others hold. */
export async function claimFiles(
  db: Database,
  owner: string,
  limit: number,
  executionId?: string,
): Promise<ClaimedFile[]> {
  // One statement, so one round trip and its own transaction. Not retried after sending: if
  // the reply is lost, the claimed rows' leases expire and the sweep hands them out again.
  // The claim commits without waiting for its WAL flush (set_config, local to this
  // statement's transaction): a claim lost in a server crash only puts the file back to
  // PENDING, where the fencing drops the late worker's result and another attempt runs.
  const { rows } = await db.query<ClaimedFile>(
    `WITH claimed AS (
           UPDATE unstuck.file_executions f
           SET status = 'EXECUTING', lease_owner = $1, started_at = now(),
               lease_expires_at = now() + make_interval(secs => f.lease_seconds)
           WHERE f.id IN (SELECT id FROM unstuck.file_executions
                          WHERE status = 'PENDING' AND available_at <= now()
                            AND ($3::bigint IS NULL OR execution_id = $3)
                            AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
                          ORDER BY available_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING f.id, f.execution_id, f.path, f.size_bytes, f.attempt, f.max_attempts, f.lease_seconds
         ), started AS (
           UPDATE unstuck.workflow_executions SET status = 'EXECUTING', started_at = now()
           WHERE id IN (SELECT execution_id FROM claimed) AND status = 'PENDING'
         )
         SELECT c.id, c.execution_id AS "executionId", e.workflow_id AS "workflowId", c.path,
                c.size_bytes::float8 AS "sizeBytes", c.attempt, c.max_attempts AS "maxAttempts",
                c.lease_seconds AS "leaseSeconds"
         FROM claimed c JOIN unstuck.workflow_executions e ON e.id = c.execution_id`,
    [owner, limit, executionId ?? null],
    { name: 'claim files' },
  );
  return rows;
}

export interface HeldFile {
  id: string;
  attempt: number;
}

/** Renews the leases this owner holds; returns the ones it no longer holds (taken over). */
export async function heartbeat(
  db: Database,
  owner: string,
  held: HeldFile[],
): Promise<HeldFile[]> {
  if (held.length === 0) return [];
  const { rows } = await db.query<{ id: string }>(
    `UPDATE unstuck.file_executions f
     SET lease_expires_at = now() + make_interval(secs => f.lease_seconds)
     FROM unnest($2::bigint[], $3::int[]) AS h(id, attempt)
     WHERE f.id = h.id AND f.attempt = h.attempt AND f.lease_owner = $1 AND f.status = 'EXECUTING'
       -- A renewal lost in a crash only shortens the lease: no need to wait for the WAL flush.
       AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
     RETURNING f.id`,
    [owner, held.map((h) => h.id), held.map((h) => h.attempt)],
    { name: 'heartbeat', idempotent: true },
  );
  const kept = new Set(rows.map((r) => r.id));
  return held.filter((h) => !kept.has(h.id));
}

export interface Outcome extends HeldFile {
  ok: boolean;
  /** false for failures a new attempt cannot fix (the file is missing, too large, binary). */
  retryable: boolean;
  sha256: string | null;
  result: unknown;
  timings: Record<string, number>;
  error: string | null;
  retryDelaySeconds: number;
  /** Where to mirror the result once it is recorded as COMPLETED (the workflow's output folder). */
  output?: { folder: string; path: string };
}

export interface FinishReport {
  /** Outcomes this call (or an earlier run of it whose reply was lost) recorded. */
  recorded: HeldFile[];
  /** Those of them that made their file COMPLETED (not STOPPED, PENDING or ERROR). */
  completed: string[];
  /** Outcomes dropped because another attempt holds, or finished, the file. */
  fencedOff: HeldFile[];
  /** Executions this call gave their final status. */
  finalized: { id: string; status: string }[];
}

/**
 * Records a batch of outcomes in one transaction: each file's status (COMPLETED, STOPPED, a new
 * PENDING attempt after a retryable failure, or ERROR), its result row, and its execution's
 * counters and final status. Batching lets many completions share one commit.
 */
// A failure that will get another attempt: the row goes back to PENDING instead of ERROR.
const retrying = 'NOT e.stop_requested AND NOT i.ok AND i.retryable AND f.attempt < f.max_attempts';

export async function finishFiles(
  db: Database,
  owner: string,
  outcomes: Outcome[],
  retry?: { budgetMs: number; maxRetries: number },
): Promise<FinishReport> {
  const column = <K extends keyof Outcome>(k: K) => outcomes.map((o) => o[k]);
  const json = (v: unknown) => (v === undefined ? null : JSON.stringify(v));
  const params = [
    owner,
    column('id'),
    column('attempt'),
    column('ok'),
    column('retryable'),
    column('sha256'),
    outcomes.map((o) => json(o.result)),
    outcomes.map((o) => json(o.timings)),
    column('error'),
    column('retryDelaySeconds'),
  ];
  // One statement is one transaction. It is safe to re-run (the compare-and-set matches nothing
  // the second time and the read-back below finds what the first run recorded), so it is
  // retried even when a failure leaves unknown whether it landed.
  const { rows } = await db.query<{
    finished: Record<string, string> | null;
    finalized: FinishReport['finalized'] | null;
  }>(
    `WITH input AS (
           -- One outcome per (file, attempt): a claim lost in a crash can hand a worker the same
           -- attempt twice, and a second outcome must not meet the results' primary key.
           SELECT DISTINCT ON (id, attempt) *
           FROM unnest($2::bigint[], $3::int[], $4::bool[], $5::bool[], $6::text[],
                       $7::jsonb[], $8::jsonb[], $9::text[], $10::float8[])
             AS i(id, attempt, ok, retryable, sha256, result, timings, error, retry_delay)
         ), moved AS (
           UPDATE unstuck.file_executions f SET
             status = CASE WHEN e.stop_requested THEN 'STOPPED' WHEN i.ok THEN 'COMPLETED'
                           WHEN ${retrying} THEN 'PENDING' ELSE 'ERROR' END,
             attempt = CASE WHEN ${retrying} THEN f.attempt + 1 ELSE f.attempt END,
             available_at = now() + make_interval(secs => i.retry_delay),
             finished_at = CASE WHEN ${retrying} THEN NULL ELSE now() END,
             lease_expires_at = NULL, recorded_by = $1, recorded_attempt = f.attempt,
             sha256 = i.sha256, step_timings = i.timings, error = i.error
           FROM input i, unstuck.workflow_executions e
           WHERE f.id = i.id AND f.attempt = i.attempt AND f.lease_owner = $1
             AND f.status = 'EXECUTING' AND e.id = f.execution_id
           RETURNING f.id, f.execution_id, f.organization_id, f.status, f.attempt
         ), results AS (
           -- By attempt too (COMPLETED keeps it): a batch may also hold an older attempt's outcome.
           INSERT INTO unstuck.file_results (file_execution_id, organization_id, execution_id, result)
           SELECT m.id, m.organization_id, m.execution_id, i.result
           FROM moved m JOIN input i ON i.id = m.id AND i.attempt = m.attempt
           WHERE m.status = 'COMPLETED'
         ), counts AS (${applyCounts('moved')})
         SELECT (SELECT json_object_agg(id::text, status) FROM moved) AS finished,
                (SELECT json_agg(json_build_object('id', id::text, 'status', status))
                   FROM counts WHERE finalized) AS finalized`,
    params,
    { name: 'finish files', idempotent: true, retry },
  );
  const finished = new Map(Object.entries(rows[0]?.finished ?? {}));
  const missing = outcomes.filter((o) => !finished.has(o.id));
  const status = new Map([...finished, ...(await readBack(db, owner, missing))]);
  return {
    recorded: outcomes.filter((o) => status.has(o.id)),
    completed: [...status].filter(([, s]) => s === 'COMPLETED').map(([id]) => id),
    fencedOff: missing.filter((o) => !status.has(o.id)),
    finalized: rows[0]?.finalized ?? [],
  };
}

/**
 * For outcomes whose compare-and-set matched nothing: which did this owner's own earlier run of
 * the same recording already land (its reply lost)? Recording marks the row with its owner and
 * attempt, whatever happened to the file since.
 */
async function readBack(
  db: Database,
  owner: string,
  missing: HeldFile[],
): Promise<Map<string, string>> {
  if (missing.length === 0) return new Map();
  const { rows } = await db.query<{ id: string; status: string }>(
    `SELECT f.id, f.status FROM unstuck.file_executions f
     JOIN unnest($2::bigint[], $3::int[]) AS m(id, attempt) ON m.id = f.id
     WHERE f.recorded_by = $1 AND f.recorded_attempt = m.attempt`,
    [owner, missing.map((m) => m.id), missing.map((m) => m.attempt)],
    { name: 'read back finished files', idempotent: true },
  );
  return new Map(rows.map((r) => [r.id, r.status]));
}

/** Gives files this owner holds back to PENDING, same attempt, for another worker (clean shutdown). */
export async function handBack(db: Database, owner: string, held: HeldFile[]): Promise<number> {
  if (held.length === 0) return 0;
  const { rowCount } = await db.query(
    `UPDATE unstuck.file_executions f
     SET status = 'PENDING', lease_owner = NULL, lease_expires_at = NULL, available_at = now()
     FROM unnest($2::bigint[], $3::int[]) AS h(id, attempt)
     WHERE f.id = h.id AND f.attempt = h.attempt AND f.lease_owner = $1 AND f.status = 'EXECUTING'`,
    [owner, held.map((h) => h.id), held.map((h) => h.attempt)],
    { name: 'hand back files', idempotent: true },
  );
  return rowCount ?? 0;
}
