export { Unstuck, type OpenOptions, type WaitOptions } from './unstuck.js';
export { loadConfig, ConfigError, type Config } from './config.js';
export {
  Database,
  type DatabaseOptions,
  type QueryOptions,
  type TransactionOptions,
  type Queryable,
  type Transaction,
} from './db/database.js';
export { classify, DatabaseUnavailableError, type ErrorClass } from './db/errors.js';
export { migrate, SchemaTooNewError } from './db/migrate.js';
export { Worker, type WorkerOptions } from './engine/worker.js';
export type { ExecutionSummary, FileExecutionRow, Status, Scope } from './engine/executions.js';
export {
  parseWorkflow,
  loadWorkflowFile,
  WorkflowError,
  type WorkflowInput,
  type WorkflowDefinition,
} from './workflow/definition.js';
export type { StepFile, StepContext, StepFunction } from './workflow/steps.js';
export { registry as metricsRegistry } from './metrics.js';
