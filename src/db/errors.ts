/**
 * What a node-postgres (or PgBouncer) error means for the caller, decided in one table.
 * The measured behaviour behind each row is in shared/notes/postgres-fault-behaviour.md.
 */

export type ErrorClass =
  /** The connection broke; the server is probably fine. Drop the connection and retry. */
  | 'connection'
  /** The server is down, starting or shutting down. Back off longer; the probe wakes waiters. */
  | 'unavailable'
  /** Serialization failure or deadlock: re-run the whole transaction on the same pool. */
  | 'conflict'
  /** Too many connections or a pooler queue timeout: back off longer. */
  | 'overload'
  /** Anything retrying cannot fix: syntax, constraints, bad data, authentication. */
  | 'permanent';

export interface Classification {
  class: ErrorClass;
  /** The connection that saw this error must not go back to the pool. */
  discardConnection: boolean;
  /** SQLSTATE or errno code, for logs and metrics. */
  code?: string;
}

type Rule = { class: ErrorClass; discard: boolean } & (
  { sqlstate: string | RegExp } | { errno: string } | { message: RegExp }
);

// Order matters: the first rule that matches wins. PgBouncer reports everything as 08P01
// with the reason only in the text, so its message rules come before the generic 08xxx row.
const rules: Rule[] = [
  { message: /unsupported startup parameter/i, class: 'permanent', discard: true }, // PgBouncer: a configuration error
  {
    message:
      /server login has been failing|server shutting down|pgbouncer cannot connect to server/i,
    class: 'unavailable',
    discard: true,
  },
  {
    message: /no more connections allowed|query_wait_timeout|too many clients/i,
    class: 'overload',
    discard: true,
  },
  {
    message: /server conn crashed|client_idle_timeout|idle transaction timeout/i,
    class: 'connection',
    discard: true,
  },
  { sqlstate: '57P03', class: 'unavailable', discard: true }, // cannot_connect_now: starting up / shutting down
  { sqlstate: '57P01', class: 'connection', discard: true }, // admin_shutdown: terminated backend, fast/immediate stop
  { sqlstate: '57P02', class: 'connection', discard: true }, // crash_shutdown
  { sqlstate: /^08/, class: 'connection', discard: true }, // connection_exception family
  { sqlstate: '40001', class: 'conflict', discard: false }, // serialization_failure
  { sqlstate: '40P01', class: 'conflict', discard: false }, // deadlock_detected
  { sqlstate: '53300', class: 'overload', discard: true }, // too_many_connections
  { sqlstate: '53400', class: 'overload', discard: true }, // configuration_limit_exceeded
  { errno: 'ECONNREFUSED', class: 'unavailable', discard: true },
  { errno: 'ENOTFOUND', class: 'permanent', discard: true }, // unknown host: a configuration error
  { errno: 'ECONNRESET', class: 'connection', discard: true },
  { errno: 'EPIPE', class: 'connection', discard: true },
  { errno: 'ETIMEDOUT', class: 'connection', discard: true },
  { errno: 'EHOSTUNREACH', class: 'unavailable', discard: true },
  { errno: 'ENETUNREACH', class: 'unavailable', discard: true },
  { errno: 'EAI_AGAIN', class: 'unavailable', discard: true },
  { message: /timeout expired|connection timeout/i, class: 'unavailable', discard: true }, // pg connect timeout
  { message: /timeout exceeded when trying to connect/, class: 'overload', discard: false }, // local pool full
  { message: /Query read timeout/, class: 'connection', discard: true },
  {
    message:
      /Connection terminated|not queryable|Client was closed|connection is closed|Connection ended/i,
    class: 'connection',
    discard: true,
  },
];

const permanent: Classification = { class: 'permanent', discardConnection: false };

export function classify(error: unknown): Classification {
  if (!(error instanceof Error)) return permanent;
  const { code, message } = error as Error & { code?: unknown };
  const sqlstate =
    typeof code === 'string' && /^[0-9A-DF-Z][0-9A-Z]{4}$/.test(code) ? code : undefined;
  const errno = typeof code === 'string' && code.startsWith('E') && !sqlstate ? code : undefined;
  for (const rule of rules) {
    const hit =
      'sqlstate' in rule
        ? sqlstate !== undefined &&
          (typeof rule.sqlstate === 'string'
            ? rule.sqlstate === sqlstate
            : rule.sqlstate.test(sqlstate))
        : 'errno' in rule
          ? errno === rule.errno
          : rule.message.test(message);
    if (hit) return { class: rule.class, discardConnection: rule.discard, code: sqlstate ?? errno };
  }
  return { ...permanent, code: sqlstate ?? errno };
}

/** Raised when an operation kept failing with a retryable error until its budget ran out. */
export class DatabaseUnavailableError extends Error {
  override name = 'DatabaseUnavailableError';
  constructor(
    readonly operation: string,
    readonly attempts: number,
    readonly elapsedMs: number,
    readonly errorClass: ErrorClass,
    override readonly cause: unknown,
  ) {
    super(
      `database operation "${operation}" gave up after ${attempts} attempt(s) in ${(elapsedMs / 1000).toFixed(1)} s ` +
        `(${errorClass}): ${cause instanceof Error ? cause.message : String(cause)}`,
    );
  }
}
