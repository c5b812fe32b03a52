import type { Database } from '../../src/db/database.js';

export interface Seed {
  files?: number;
  maxAttempts?: number;
  leaseSeconds?: number;
}

/** An execution with `files` PENDING file executions, written straight into the tables. */
export async function seedExecution(db: Database, seed: Seed = {}): Promise<string> {
  const { files = 10, maxAttempts = 3, leaseSeconds = 30 } = seed;
  const { rows } = await db.query<{ id: string }>(
    `WITH org AS (SELECT id FROM unstuck.organizations WHERE name = 'default'),
     w AS (
       INSERT INTO unstuck.workflows (organization_id, name, definition, definition_hash)
       SELECT id, 'seeded', '{}', md5(random()::text) FROM org RETURNING id, organization_id
     ), e AS (
       INSERT INTO unstuck.workflow_executions (organization_id, workflow_id, total)
       SELECT organization_id, id, $1 FROM w RETURNING id, organization_id
     ), f AS (
       INSERT INTO unstuck.file_executions
         (organization_id, execution_id, path, size_bytes, max_attempts, lease_seconds)
       SELECT e.organization_id, e.id, 'file-' || lpad(g::text, 6, '0'), 10, $2, $3
       FROM e, generate_series(1, $1) g
     )
     SELECT id::text FROM e`,
    [files, maxAttempts, leaseSeconds],
  );
  return rows[0]!.id;
}
