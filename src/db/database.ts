import pg from 'pg';
import type { Config } from '../config.js';
import { log as rootLog, type Logger } from '../log.js';
import { dbMetrics } from '../metrics.js';
import { classify, DatabaseUnavailableError, type Classification } from './errors.js';
import { backoffDelay, type RetryBudget } from './retry-policy.js';
import { ServerProbe } from './server-probe.js';

export type Row = pg.QueryResultRow;
export type Result<R extends Row = Row> = pg.QueryResult<R>;

/** Anything that runs SQL: the database itself, or the transaction a function was handed. */
export interface Queryable {
  query<R extends Row = Row>(sql: string, params?: unknown[]): Promise<Result<R>>;
}

export interface DatabaseOptions {
  url: string;
  poolSize: number;
  connectTimeoutMs: number;
  /** Server-side limit per statement; 0 for none. */
  statementTimeoutMs: number;
  /** Client-side limit on waiting for a reply (catches a silent network); 0 for none. */
  queryTimeoutMs: number;
  idleTimeoutMs: number;
  /** PgBouncer in transaction mode: no session state, statement timeout set per transaction. */
  pgbouncer: boolean;
  echo: boolean;
  retry: RetryBudget;
  probeIntervalMs?: number;
  applicationName?: string;
  random?: () => number;
  log?: Logger;
}

export interface QueryOptions {
  /** Names the operation in logs and metrics. */
  name?: string;
  /** Safe to run twice: retried even when the failure came after the statement was sent. */
  idempotent?: boolean;
  /** This call's own budget, e.g. longer for work that must not be lost, shorter for a user's read. */
  retry?: Partial<RetryBudget>;
}

export interface TransactionOptions {
  name?: string;
  retry?: Partial<RetryBudget>;
  isolation?: 'read committed' | 'repeatable read' | 'serializable';
}

export function databaseOptions(config: Config, url: string): DatabaseOptions {
  return {
    url,
    poolSize: config.poolSize,
    connectTimeoutMs: config.connectTimeout * 1000,
    statementTimeoutMs: config.statementTimeout * 1000,
    queryTimeoutMs: config.queryTimeout * 1000,
    idleTimeoutMs: config.idleTimeout * 1000,
    pgbouncer: config.pgbouncer,
    echo: config.echo,
    retry: {
      maxRetries: config.retryMaxRetries,
      baseDelayMs: config.retryBaseDelay * 1000,
      maxDelayMs: config.retryMaxDelay * 1000,
      budgetMs: config.retryBudget * 1000,
    },
  };
}

/** The handle a transaction function gets: its statements, and nested units that join it. */
export interface Transaction extends Queryable {
  transaction<T>(fn: (tx: Transaction) => Promise<T>): Promise<T>;
}

// Errors raised before a statement reached the server: retrying them can never run it twice.
const unsent = new WeakSet<object>();
const markUnsent = (error: unknown) => {
  if (error instanceof Object) unsent.add(error);
  return error;
};
// Clients whose ROLLBACK failed: their state is unknown, so they must not be reused.
const doubtful = new WeakSet<pg.PoolClient>();
const wasUnsent = (error: unknown) =>
  (error instanceof Object && unsent.has(error)) ||
  (error instanceof Error && /not queryable/.test(error.message));

/**
 * The one place unstuck's SQL goes through: it classifies every failure, retries what is safe to
 * retry with backoff and jitter, throws away broken connections, and logs and counts each retry.
 */
export class Database implements Queryable {
  readonly pool: pg.Pool;
  private readonly probe: ServerProbe;
  private readonly log: Logger;
  private readonly beginSql: Record<NonNullable<TransactionOptions['isolation']>, string>;
  private readonly timeoutPerTransaction: boolean;

  constructor(private readonly options: DatabaseOptions) {
    this.log = (options.log ?? rootLog).child({ module: 'db' });
    const connection = {
      connectionString: options.url,
      connectionTimeoutMillis: options.connectTimeoutMs,
      query_timeout: options.queryTimeoutMs || undefined,
      // PgBouncer rejects unknown startup parameters, so there the timeout is set per transaction.
      statement_timeout: options.pgbouncer ? undefined : options.statementTimeoutMs || undefined,
      application_name: options.applicationName ?? 'unstuck',
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    };
    this.pool = new pg.Pool({
      ...connection,
      max: options.poolSize,
      idleTimeoutMillis: options.idleTimeoutMs,
    });
    // An 'error' event without a listener kills the process: idle clients report through the
    // pool, checked-out clients through themselves.
    this.pool.on('error', (error) => {
      dbMetrics.connectionsDiscarded.inc();
      this.log.warn({ err: error.message }, 'idle database connection lost');
    });
    this.pool.on('connect', (client) =>
      client.on('error', (error) =>
        this.log.debug({ err: error.message }, 'database connection error'),
      ),
    );
    this.probe = new ServerProbe(
      () => this.check(connection),
      options.probeIntervalMs ?? 200,
      this.log,
      options.random,
    );
    this.timeoutPerTransaction = options.pgbouncer && options.statementTimeoutMs > 0;
    const timeout = this.timeoutPerTransaction
      ? `; SET LOCAL statement_timeout = ${Math.round(options.statementTimeoutMs)}`
      : '';
    this.beginSql = {
      'read committed': `BEGIN${timeout}`,
      'repeatable read': `BEGIN ISOLATION LEVEL REPEATABLE READ${timeout}`,
      serializable: `BEGIN ISOLATION LEVEL SERIALIZABLE${timeout}`,
    };
  }

  /**
   * Runs one statement on its own. A failure before sending is always retried; after sending,
   * only when the caller declares the statement idempotent. Inside a transaction, use the
   * handle the transaction gave you: this starts an independent unit of work.
   */
  query<R extends Row = Row>(
    sql: string,
    params?: unknown[],
    options: QueryOptions = {},
  ): Promise<Result<R>> {
    return this.retrying(options.name ?? 'query', options.retry, options.idempotent ?? false, () =>
      this.withClient((client) =>
        // Behind PgBouncer only a transaction can carry a statement timeout.
        this.timeoutPerTransaction
          ? this.inTransaction(client, this.beginSql['read committed'], (tx) =>
              tx.query<R>(sql, params),
            )
          : this.send<R>(client, sql, params),
      ),
    );
  }

  /**
   * Runs fn in one transaction. On a retryable failure the whole of fn runs again on a fresh
   * connection, so fn must decide its statements from what it reads, and be safe to re-run
   * (a COMMIT whose reply was lost may have landed). `tx.transaction(inner)` joins this
   * transaction: only the outermost unit retries.
   */
  transaction<T>(
    fn: (tx: Transaction) => Promise<T>,
    options: TransactionOptions = {},
  ): Promise<T> {
    const begin = this.beginSql[options.isolation ?? 'read committed'];
    return this.retrying(options.name ?? 'transaction', options.retry, true, () =>
      this.withClient((client) => this.inTransaction(client, begin, fn)),
    );
  }

  private async inTransaction<T>(
    client: pg.PoolClient,
    begin: string,
    fn: (tx: Transaction) => Promise<T>,
  ): Promise<T> {
    let open = true;
    const tx: Transaction = {
      // Work fn left behind (a timer, an unawaited promise) must not use a released client.
      query: (sql, params) =>
        open
          ? this.send(client, sql, params)
          : Promise.reject(new Error('transaction already ended')),
      transaction: (inner) => inner(tx),
    };
    await this.send(client, begin);
    try {
      const result = await fn(tx);
      await this.send(client, 'COMMIT');
      return result;
    } catch (error) {
      if (!classify(error).discardConnection) {
        await this.send(client, 'ROLLBACK').catch(() => doubtful.add(client));
      }
      throw error;
    } finally {
      open = false;
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private send<R extends Row>(
    client: pg.PoolClient,
    sql: string,
    params?: unknown[],
  ): Promise<Result<R>> {
    if (this.options.echo) this.log.debug({ sql, params: params?.length ?? 0 }, 'sql');
    return client.query<R>(sql, params);
  }

  private async withClient<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool
      .connect()
      .catch((error: unknown) => Promise.reject(markUnsent(error)));
    let discard = false;
    try {
      return await fn(client);
    } catch (error) {
      discard = classify(error).discardConnection || doubtful.has(client);
      throw error;
    } finally {
      if (discard) dbMetrics.connectionsDiscarded.inc();
      client.release(discard);
    }
  }

  private async retrying<T>(
    name: string,
    override: Partial<RetryBudget> | undefined,
    safeAfterSend: boolean,
    attempt: () => Promise<T>,
  ): Promise<T> {
    const started = Date.now();
    for (let retry = 1; ; retry++) {
      try {
        return await attempt();
      } catch (error) {
        const failure = classify(error);
        if (failure.class === 'permanent') {
          dbMetrics.permanentErrors.inc();
          throw error;
        }
        if (!safeAfterSend && !wasUnsent(error)) throw error;
        const budget = override ? { ...this.options.retry, ...override } : this.options.retry;
        const elapsed = Date.now() - started;
        const delay = Math.min(
          backoffDelay(failure.class, retry, budget, this.options.random),
          budget.budgetMs - elapsed,
        );
        if (retry > budget.maxRetries || delay <= 0)
          throw this.giveUp(name, retry, elapsed, failure, error);
        dbMetrics.retries.inc({ class: failure.class });
        this.log.warn(
          {
            op: name,
            attempt: retry,
            delayMs: Math.round(delay),
            class: failure.class,
            code: failure.code,
            err: (error as Error).message,
          },
          'database operation failed; retrying',
        );
        await (failure.class === 'connection' || failure.class === 'unavailable'
          ? this.probe.pause(delay)
          : new Promise((resolve) => setTimeout(resolve, delay)));
      }
    }
  }

  private giveUp(
    name: string,
    attempts: number,
    elapsed: number,
    failure: Classification,
    error: unknown,
  ) {
    dbMetrics.giveUps.inc({ class: failure.class });
    const gaveUp = new DatabaseUnavailableError(name, attempts, elapsed, failure.class, error);
    this.log.error(
      {
        op: name,
        attempts,
        elapsedMs: elapsed,
        class: failure.class,
        code: failure.code,
        err: error,
      },
      gaveUp.message,
    );
    return gaveUp;
  }

  /** The probe's question: can a brand-new connection run a statement right now? */
  private async check(connection: pg.ClientConfig): Promise<void> {
    const client = new pg.Client({ ...connection, statement_timeout: undefined });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}
