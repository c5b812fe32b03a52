import { loadConfig, type Config } from './config.js';
import type { Database } from './db/database.js';
import { migrate } from './db/migrate.js';
import { openDatabase, type OpenDatabase } from './db/open.js';
import {
  durable,
  getExecution,
  listExecutions,
  listFileExecutions,
  organizationScope,
  retryExecution,
  stopExecution,
  submitExecution,
  terminal,
  type ExecutionSummary,
  type Scope,
  type Status,
} from './engine/executions.js';
import { Worker, type WorkerOptions } from './engine/worker.js';
import {
  parseWorkflow,
  resolveWorkflow,
  type WorkflowDefinition,
  type WorkflowInput,
} from './workflow/definition.js';

export interface OpenOptions {
  /** Settings; read from the environment (and validated) when absent. */
  config?: Config;
  /** The organization whose data this handle sees. Default "default". */
  organization?: string;
}

export interface WaitOptions {
  onProgress?: (summary: ExecutionSummary) => void;
  intervalMs?: number;
  /** Stops waiting (rejects with its reason); the execution itself goes on. */
  signal?: AbortSignal;
}

/**
 * The library's front door: one handle on one database (yours, or the embedded default) for
 * one organization. The CLI is built on it too.
 */
export class Unstuck {
  private constructor(
    readonly db: Database,
    readonly scope: Scope,
    readonly config: Config,
    private readonly opened: OpenDatabase,
  ) {}

  static async open(options: OpenOptions = {}): Promise<Unstuck> {
    const config = options.config ?? loadConfig();
    const opened = await openDatabase(config);
    try {
      await migrate(opened.db);
      const scope = await organizationScope(opened.db, options.organization);
      return new Unstuck(opened.db, scope, config, opened);
    } catch (error) {
      await opened.close();
      throw error;
    }
  }

  /** The embedded server in use, when no DATABASE_URL was given. */
  get embedded() {
    return this.opened.embedded;
  }

  /** Lists the workflow's files into a new execution and returns its id; workers do the rest. */
  async submit(workflow: WorkflowInput | WorkflowDefinition, baseDir = process.cwd()) {
    const resolved = await resolveWorkflow(parseWorkflow(workflow), baseDir);
    return { ...(await submitExecution(this.db, this.scope, resolved)), workflow: resolved };
  }

  /** A worker in this process; call start() on it, and stop() before close(). */
  worker(options: Partial<WorkerOptions> = {}): Worker {
    return new Worker(this.db, { concurrency: 4, ...options });
  }

  status(executionId: string) {
    return getExecution(this.db, this.scope, executionId);
  }

  executions(limit?: number) {
    return listExecutions(this.db, this.scope, limit);
  }

  files(executionId: string, status?: Status) {
    return listFileExecutions(this.db, this.scope, executionId, status);
  }

  stop(executionId: string) {
    return stopExecution(this.db, this.scope, executionId);
  }

  retry(executionId: string) {
    return retryExecution(this.db, this.scope, executionId);
  }

  /** Resolves with the execution once it is COMPLETED, ERROR or STOPPED. */
  async wait(executionId: string, options: WaitOptions = {}): Promise<ExecutionSummary> {
    for (;;) {
      options.signal?.throwIfAborted();
      // Waiting is what the caller wants anyway: ride out an outage rather than give up.
      const summary = await getExecution(this.db, this.scope, executionId, durable);
      if (!summary) throw new Error(`execution ${executionId} does not exist`);
      options.onProgress?.(summary);
      if (terminal.includes(summary.status)) return summary;
      // The listener goes when the timer fires: one per poll would pile up on a long wait.
      await new Promise<void>((resolve) => {
        const onAbort = () => (clearTimeout(timer), resolve());
        const timer = setTimeout(() => {
          options.signal?.removeEventListener('abort', onAbort);
          resolve();
        }, options.intervalMs ?? 250);
        options.signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
  }

  /** Submits, processes in this process with `concurrency` files at once, and waits for the end. */
  async run(
    workflow: WorkflowInput | WorkflowDefinition,
    options: WaitOptions & { concurrency?: number } = {},
  ) {
    const { executionId, workflow: resolved } = await this.submit(workflow);
    const concurrency = options.concurrency ?? resolved.definition.options.concurrency;
    const worker = this.worker({ concurrency, executionId });
    worker.start();
    try {
      return await this.wait(executionId, options);
    } finally {
      await worker.stop();
    }
  }

  async close(): Promise<void> {
    await this.opened.close();
  }
}
