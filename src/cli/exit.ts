import { CommanderError } from 'commander';
import { ConfigError } from '../config.js';
import { classify, DatabaseUnavailableError } from '../db/errors.js';
import { SchemaTooNewError } from '../db/migrate.js';
import { PortInUseError } from '../db/embedded-server.js';
import { WorkflowError } from '../workflow/definition.js';

/** Exit codes scripts can rely on; documented in the README and --help. */
export const exitCodes = {
  ok: 0,
  failure: 1,
  badInput: 2,
  databaseUnavailable: 3,
  notFound: 4,
  interrupted: 130,
} as const;

export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

/** The command line asks for something that cannot be done as given (exit 2, like commander's own). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** One line for the user, and the exit code that says what kind of failure it was. */
export function describeFailure(error: unknown): { message: string; code: number } {
  const message = error instanceof Error ? error.message : String(error);
  if (
    error instanceof ConfigError ||
    error instanceof WorkflowError ||
    error instanceof UsageError ||
    error instanceof PortInUseError
  ) {
    return { message, code: exitCodes.badInput };
  }
  if (error instanceof SchemaTooNewError) return { message, code: exitCodes.badInput };
  if (error instanceof NotFoundError) return { message, code: exitCodes.notFound };
  if (error instanceof CommanderError) return { message, code: exitCodes.badInput };
  if (error instanceof DatabaseUnavailableError || classify(error).class !== 'permanent') {
    return { message: `database unavailable: ${message}`, code: exitCodes.databaseUnavailable };
  }
  const code = (error as { code?: unknown }).code;
  // Wrong password, unknown database or host: the database cannot be used as configured.
  if (code === '28P01' || code === '3D000' || code === '28000' || code === 'ENOTFOUND') {
    return { message: `cannot use the database: ${message}`, code: exitCodes.databaseUnavailable };
  }
  return { message, code: exitCodes.failure };
}
