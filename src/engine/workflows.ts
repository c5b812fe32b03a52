import { createHash } from 'node:crypto';
import type { Database } from '../db/database.js';
import {
  resolveWorkflow,
  type ResolvedWorkflow,
  type WorkflowDefinition,
} from '../workflow/definition.js';
import type { Scope } from './executions.js';

/**
 * Stores a workflow definition (its paths already absolute) once per distinct content, so
 * every execution points at exactly the definition it ran with.
 */
export async function saveWorkflow(
  db: Database,
  scope: Scope,
  definition: WorkflowDefinition,
): Promise<string> {
  const json = JSON.stringify(definition);
  const hash = createHash('sha256').update(json).digest('hex');
  const { rows } = await db.query<{ id: string }>(
    `WITH new AS (
       INSERT INTO unstuck.workflows (organization_id, name, definition, definition_hash)
       VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id)
     SELECT id FROM new UNION ALL
     SELECT id FROM unstuck.workflows WHERE organization_id = $1 AND name = $2 AND definition_hash = $4`,
    [scope.organizationId, definition.name, json, hash],
    { name: 'save workflow', idempotent: true },
  );
  return rows[0]!.id;
}

/** Workers load each workflow once; a definition row never changes, so the cache never goes stale. */
export class WorkflowCache {
  private readonly loaded = new Map<string, Promise<ResolvedWorkflow>>();

  constructor(private readonly db: Database) {}

  get(workflowId: string): Promise<ResolvedWorkflow> {
    let workflow = this.loaded.get(workflowId);
    if (!workflow) {
      workflow = this.load(workflowId);
      workflow.catch(() => this.loaded.delete(workflowId));
      this.loaded.set(workflowId, workflow);
    }
    return workflow;
  }

  private async load(workflowId: string): Promise<ResolvedWorkflow> {
    const { rows } = await this.db.query<{ definition: WorkflowDefinition }>(
      'SELECT definition FROM unstuck.workflows WHERE id = $1',
      [workflowId],
      { name: 'load workflow', idempotent: true },
    );
    if (!rows[0]) throw new Error(`workflow ${workflowId} does not exist`);
    return resolveWorkflow(rows[0].definition, '/');
  }
}
