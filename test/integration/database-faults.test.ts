// The database layer against real faults: a real PostgreSQL killed, restarted and stopped, a
// real PgBouncer SIGKILLed, a real TCP blackhole. Every test asserts on the data (rows, counts,
// what rejected with what), never on log lines.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import pg from 'pg';
import type { Database } from '../../src/db/database.js';
import { classify, DatabaseUnavailableError } from '../../src/db/errors.js';
import { migrate, SchemaTooNewError } from '../../src/db/migrate.js';
import { dbMetrics } from '../../src/metrics.js';
import { countFrom, testDatabase, timed, waitFor, withSeed } from '../harness/db.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { pgbouncerSkipReason, startPgBouncer } from '../harness/pgbouncer.js';
import { sharedTestServer, startTestServer, type TestServer } from '../harness/server.js';

const TOTAL = 1_000;
const IN_FLIGHT = 8;

/** One short-lived plain connection, outside the layer: the test's own view of the data. */
async function direct<R extends pg.QueryResultRow>(url: string, sql: string, params?: unknown[]) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

const databaseName = (url: string) => decodeURIComponent(new URL(url).pathname.slice(1));

/** Waits until a statement is running on the server (seen in pg_stat_activity). */
const running = (adminUrl: string, pattern: string) =>
  waitFor(
    async () =>
      (
        await direct(
          adminUrl,
          "SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active'",
          [pattern],
        )
      ).length > 0,
    { timeoutMs: 10_000, message: `a statement like ${pattern} running` },
  );

/** A timer that is the point of the test (a storm's rhythm, an outage's length), not a wait. */
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function createWorkloadTables(url: string): Promise<void> {
  await direct(
    url,
    `CREATE TABLE items (id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
     INSERT INTO counter VALUES (1, 0);`,
  );
}

/**
 * TOTAL transactions, IN_FLIGHT at a time, each inserting one row keyed by a unique id and
 * counting it, written to be re-run: a COMMIT whose reply was lost may have landed, and the
 * layer then runs the whole transaction again. `midway` runs once, after a third is done.
 */
async function runWorkload(
  db: Database,
  midway?: () => Promise<void>,
  { thinkMs = 0 }: { thinkMs?: number } = {},
): Promise<{ reruns: number; doneAfterFault: number }> {
  let next = 0;
  let done = 0;
  let reruns = 0;
  let fault: Promise<number> | undefined;
  const worker = async () => {
    for (let i = next++; i < TOTAL; i = next++) {
      const id = `item-${String(i).padStart(4, '0')}`;
      await db.transaction(
        async (tx) => {
          // Before the counter's row lock, so that transactions overlap while they think.
          if (thinkMs > 0) await tx.query('SELECT pg_sleep($1)', [thinkMs / 1000]);
          const inserted = await tx.query(
            'INSERT INTO items (id) VALUES ($1) ON CONFLICT DO NOTHING',
            [id],
          );
          if (inserted.rowCount === 1) await tx.query('UPDATE counter SET n = n + 1 WHERE id = 1');
          else reruns++; // an earlier run's COMMIT landed though its reply was lost
        },
        { name: 'workload' },
      );
      if (++done === Math.floor(TOTAL / 3) && midway) fault = midway().then(() => done);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  const doneAtFaultEnd = fault ? await fault : TOTAL;
  return { reruns, doneAfterFault: TOTAL - doneAtFaultEnd };
}

async function assertWorkloadData(url: string): Promise<void> {
  const [stats] = await direct<{ rows: number; distinct: number; first: string; last: string }>(
    url,
    'SELECT count(*)::int AS rows, count(DISTINCT id)::int AS distinct, min(id) AS first, max(id) AS last FROM items',
  );
  assert.deepEqual(stats, {
    rows: TOTAL,
    distinct: TOTAL,
    first: 'item-0000',
    last: `item-${String(TOTAL - 1).padStart(4, '0')}`,
  });
  const [counter] = await direct<{ n: number }>(url, 'SELECT n FROM counter WHERE id = 1');
  assert.equal(counter?.n, TOTAL, withSeed('the counter counted every row exactly once'));
}

/**
 * Runs the workload on `db` with `restart` a third of the way in: every row must be there once,
 * transactions must have run after the restart, and the layer must have retried.
 */
async function assertSurvivesRestart(
  t: TestContext,
  db: Database,
  url: string,
  restart: () => Promise<void>,
): Promise<void> {
  const retries = await countFrom(dbMetrics.retries);
  const result = await runWorkload(db, restart);
  await assertWorkloadData(url);
  assert.ok(result.doneAfterFault > 0, 'transactions ran after the restart');
  const retried = await retries.delta();
  assert.ok(retried > 0, 'the layer retried');
  t.diagnostic(
    `retries ${retried}, done after the restart ${result.doneAfterFault}, re-runs ${result.reruns}`,
  );
}

const noPgBouncer = pgbouncerSkipReason();
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});
/** A Database closed after the file's tests, whatever happens to the test. */
function database(url: string, overrides: Parameters<typeof testDatabase>[1] = {}): Database {
  const db = testDatabase(url, overrides);
  cleanups.push(() => db.close());
  return db;
}

describe('the workload survives connection storms and restarts', () => {
  test('a storm terminating every backend every 200 ms during 1,000 transactions', async (t) => {
    const server = await sharedTestServer();
    const url = await server.createDatabase();
    await createWorkloadTables(url);
    const db = database(url);
    const retries = await countFrom(dbMetrics.retries);
    // Not server.terminateBackends(): its pg_terminate_backend(pid, timeout) waits for each
    // backend in 100 ms steps, which spreads one "storm" over a second. Signal all at once.
    const admin = new pg.Client({ connectionString: server.url() });
    admin.on('error', () => undefined);
    await admin.connect();
    let stormy = true;
    let killed = 0;
    let storms = 0;
    const storm = (async () => {
      while (stormy) {
        const { rows } = await admin.query<{ n: number }>(
          `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
           WHERE datname = $1 AND backend_type = 'client backend'`,
          [databaseName(url)],
        );
        killed += rows[0]!.n;
        storms++;
        await pause(200);
      }
    })();
    let result: Awaited<ReturnType<typeof runWorkload>>;
    try {
      // 10 ms of work per transaction keeps transactions open when the storm strikes.
      result = await runWorkload(db, undefined, { thinkMs: 10 });
    } finally {
      stormy = false;
      await storm;
      await admin.end();
    }
    await assertWorkloadData(url);
    assert.ok(killed > 0, 'the storm terminated backends');
    const retried = await retries.delta();
    assert.ok(retried > 0, 'the layer retried');
    t.diagnostic(
      `storms ${storms}, backends killed ${killed}, retries ${retried}, re-runs after a landed COMMIT ${result.reruns}`,
    );
  });

  test('an immediate server restart in the middle', async (t) => {
    const server = await startTestServer();
    cleanups.push(() => server.destroy());
    const url = await server.createDatabase();
    await createWorkloadTables(url);
    const db = database(url);
    await assertSurvivesRestart(t, db, url, () => server.restart('immediate'));
    await server.destroy();
  });

  test(
    'through PgBouncer (transaction mode), PgBouncer SIGKILLed and restarted in the middle',
    { skip: noPgBouncer },
    async (t) => {
      const server = await sharedTestServer();
      const url = await server.createDatabase();
      await createWorkloadTables(url);
      const bouncer = await startPgBouncer(server, { poolMode: 'transaction' });
      cleanups.push(() => bouncer.destroy());
      const db = database(bouncer.url(url), { pgbouncer: true, statementTimeoutMs: 10_000 });
      await assertSurvivesRestart(t, db, url, () => bouncer.restart('SIGKILL'));
      await bouncer.destroy();
    },
  );
});

describe('permanent errors, budgets and timeouts', () => {
  let server: TestServer;
  let url: string;
  let db: Database;

  before(async () => {
    server = await sharedTestServer();
    url = await server.createDatabase();
    await direct(url, 'CREATE TABLE u (id int PRIMARY KEY)');
    await direct(url, 'INSERT INTO u VALUES (1)');
    db = database(url);
  });

  test('a permanent error is raised at once as the original error: zero retries', async () => {
    const retries = await countFrom(dbMetrics.retries);
    const permanent = await countFrom(dbMetrics.permanentErrors);
    const giveUps = await countFrom(dbMetrics.giveUps);

    await assert.rejects(db.query('SELEC 1'), (e: unknown) => {
      assert.ok(e instanceof pg.DatabaseError, `the driver's own error, not a wrapper: ${e}`);
      assert.equal(e.code, '42601');
      return true;
    });
    await assert.rejects(db.query('INSERT INTO u VALUES (1)', [], { idempotent: true }), {
      code: '23505',
    });

    let runs = 0;
    await assert.rejects(
      db.transaction(async (tx) => {
        runs++;
        await tx.query('INSERT INTO u VALUES (2)');
        await tx.query('INSERT INTO u VALUES (1)');
      }),
      (e: unknown) => e instanceof pg.DatabaseError && e.code === '23505',
    );
    assert.equal(runs, 1, 'the transaction ran once');

    const mine = new Error('not a database error');
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.query('INSERT INTO u VALUES (3)');
        throw mine;
      }),
      (e: unknown) => e === mine,
    );

    assert.equal(await retries.delta(), 0, 'no retries');
    assert.equal(await giveUps.delta(), 0, 'no give-ups');
    assert.equal(await permanent.delta(), 4, 'four permanent errors counted');
    // Both failed transactions rolled back; the pool is still healthy.
    assert.deepEqual(await direct(url, 'SELECT id FROM u ORDER BY id'), [{ id: 1 }]);
    assert.equal((await db.query('SELECT 1 AS one')).rows[0]?.one, 1);
  });

  test('a non-idempotent query failing after it was sent is not retried; an idempotent one is', async () => {
    const retries = await countFrom(dbMetrics.retries);
    // The handler is attached now: the rejection comes while the test is still killing.
    const sent = db.query('SELECT pg_sleep(2)', [], { name: 'sleep-once' }).then(
      () => assert.fail('the query should have failed'),
      (e: unknown) => e,
    );
    await running(url, 'SELECT pg_sleep(2)');
    await server.terminateBackends(databaseName(url));
    const error = await sent;
    assert.ok(!(error instanceof DatabaseUnavailableError), `the original error: ${error}`);
    assert.equal((error as { code?: string }).code, '57P01', String(error));
    assert.equal(await retries.delta(), 0, 'not retried');

    const again = db.query<{ ok: boolean }>('SELECT true AS ok FROM pg_sleep(2)', [], {
      idempotent: true,
    });
    await running(url, 'SELECT true AS ok FROM pg_sleep(2)');
    await server.terminateBackends(databaseName(url));
    assert.deepEqual((await again).rows, [{ ok: true }]);
    assert.ok((await retries.delta()) >= 1, 'the idempotent query was retried');
  });

  test('nested transactions do not multiply retries: killed once, the outer function runs twice', async () => {
    await direct(url, 'CREATE TABLE nested (attempt int NOT NULL)');
    const retries = await countFrom(dbMetrics.retries);
    let outerRuns = 0;
    let innerRuns = 0;
    await db.transaction(async (tx) => {
      const attempt = ++outerRuns;
      await tx.query('INSERT INTO nested VALUES ($1)', [attempt]);
      await tx.transaction(async (inner) => {
        innerRuns++;
        await inner.query('INSERT INTO nested VALUES ($1)', [attempt * 10]);
        if (attempt === 1) {
          const [{ pid }] = (await inner.query<{ pid: number }>('SELECT pg_backend_pid() AS pid'))
            .rows as [{ pid: number }];
          await direct(url, 'SELECT pg_terminate_backend($1, 5000)', [pid]);
        }
      });
      await tx.query('INSERT INTO nested VALUES ($1)', [attempt * 100]);
    });
    assert.equal(outerRuns, 2, 'the outer function ran exactly twice');
    assert.equal(innerRuns, 2, 'the inner function ran once per outer run');
    assert.equal(await retries.delta(), 1, 'one retry, at the outermost level');
    // Only the second run's rows exist: the first run's died with its transaction.
    const rows = await direct<{ attempt: number }>(url, 'SELECT attempt FROM nested ORDER BY 1');
    assert.deepEqual(
      rows.map((r) => r.attempt),
      [2, 20, 200],
    );
  });
});

describe('outages: budgets, blackholes, the probe, surviving clients', () => {
  test('the server down longer than the budget: DatabaseUnavailableError within the budget, then recovery', async () => {
    const server = await startTestServer();
    cleanups.push(() => server.destroy());
    const budgetMs = 3_000;
    const db = database(server.url(), { retry: { budgetMs, maxRetries: 1000 } });
    await db.query('SELECT 1');
    await server.stop('fast');
    const giveUps = await countFrom(dbMetrics.giveUps);
    const outcome = await timed(() => db.query('SELECT 1', [], { name: 'down' }));
    assert.ok(outcome.error instanceof DatabaseUnavailableError, `gave up: ${outcome.error}`);
    assert.equal(outcome.error.operation, 'down');
    assert.equal(outcome.error.errorClass, 'unavailable');
    assert.equal((outcome.error.cause as { code?: string }).code, 'ECONNREFUSED');
    assert.ok(outcome.error.attempts > 1, 'it did retry');
    assert.ok(outcome.ms >= budgetMs - 100, withSeed(`used the budget: ${outcome.ms} ms`));
    assert.ok(outcome.ms <= budgetMs + 1_000, withSeed(`within budget + 1 s: ${outcome.ms} ms`));
    assert.equal(await giveUps.delta(), 1);
    await server.start();
    assert.equal((await db.query('SELECT 1 AS one')).rows[0]?.one, 1);
    await server.destroy();
  });

  test('a TCP blackhole: calls fail after the configured timeouts and budget instead of hanging', async () => {
    const server = await sharedTestServer();
    const proxy = await FaultProxy.start({ port: server.port });
    cleanups.push(() => proxy.close());
    const timeouts = { connectTimeoutMs: 500, queryTimeoutMs: 500 };
    const budgetMs = 2_000;
    const bound = budgetMs + 500 + 1_000; // the budget, one attempt's timeout, a margin

    // An established connection: the reply never comes.
    const warm = database(proxy.url(server.url()), { ...timeouts, retry: { budgetMs } });
    await warm.query('SELECT 1');
    proxy.setMode('blackhole');
    const once = await timed(() => warm.query('SELECT 1'));
    assert.match(String(once.error), /Query read timeout/, 'not idempotent: the original error');
    assert.ok(once.ms < 500 + 1_000, `after the query timeout: ${once.ms} ms`);

    const reads = await timed(() => warm.query('SELECT 1', [], { idempotent: true }));
    assert.ok(reads.error instanceof DatabaseUnavailableError, `gave up: ${reads.error}`);
    assert.ok(reads.ms <= bound, withSeed(`idempotent read ended in ${reads.ms} ms`));

    // A fresh pool: connecting never finishes.
    const cold = database(proxy.url(server.url()), { ...timeouts, retry: { budgetMs } });
    const tx = await timed(() => cold.transaction((t) => t.query('SELECT 1')));
    assert.ok(tx.error instanceof DatabaseUnavailableError, `gave up: ${tx.error}`);
    assert.equal(tx.error.errorClass, 'unavailable');
    assert.match(String((tx.error.cause as Error).message), /timeout/);
    assert.ok(
      tx.ms >= budgetMs - 100 && tx.ms <= bound,
      withSeed(`transaction ended in ${tx.ms} ms`),
    );

    // Healed: the same Database works again.
    proxy.setMode('pass');
    assert.equal((await cold.query('SELECT 1 AS one')).rows[0]?.one, 1);
    await proxy.close();
  });

  test('after a 20-second outage the first call completes within 1.5 s of the server accepting again', async (t) => {
    const server = await startTestServer();
    cleanups.push(() => server.destroy());
    // Callers' own backoff would reach tens of seconds; the probe (default interval) must not.
    const db = database(server.url(), {
      probeIntervalMs: undefined,
      retry: { maxRetries: 1000, baseDelayMs: 1_000, maxDelayMs: 60_000, budgetMs: 120_000 },
    });
    await db.query('SELECT 1');
    const wakeUps = await countFrom(dbMetrics.probeWakeUps);
    await server.stop('fast');
    const outageStart = Date.now();
    const finished: number[] = [];
    const callers: Promise<unknown>[] = [];
    const call = (i: number) =>
      (i % 2
        ? db.query('SELECT 1', [], { name: `caller-${i}` })
        : db.transaction((tx) => tx.query('SELECT 1'), { name: `caller-${i}` })
      ).then(() => finished.push(Date.now()));
    // Callers joining at different moments of the outage reach different backoff steps.
    for (const at of [0, 500, 2_000, 5_000, 9_000, 14_000, 18_000]) {
      await pause(at - (Date.now() - outageStart));
      callers.push(call(callers.length));
    }
    await pause(20_000 - (Date.now() - outageStart));
    assert.equal(finished.length, 0, 'nothing completed while the server was down');

    let acceptingAt = 0;
    const watching = waitFor(
      async () => {
        await direct(server.url(), 'SELECT 1');
        acceptingAt = Date.now();
        return true;
      },
      { timeoutMs: 30_000, intervalMs: 10, message: 'the server accepting connections' },
    );
    await server.start();
    await watching;
    await Promise.all(callers);
    const slowest = Math.max(...finished) - acceptingAt;
    assert.equal(finished.length, 7);
    assert.ok(
      slowest <= 1_500,
      withSeed(`every caller done ${slowest} ms after the server was back`),
    );
    assert.ok((await wakeUps.delta()) >= 1, 'the probe woke the callers');
    t.diagnostic(
      `callers done ${finished.map((f) => f - acceptingAt).join(', ')} ms after the server was back`,
    );
    await server.destroy();
  });

  test('a COMMIT whose reply is lost landed: the re-run finds its row and records nothing twice', async () => {
    const server = await sharedTestServer();
    const url = await server.createDatabase();
    await createWorkloadTables(url);
    const proxy = await FaultProxy.start({ port: server.port });
    cleanups.push(() => proxy.close());
    const db = database(proxy.url(url));
    await db.query('SELECT 1'); // connect before the wire gets slow
    // 400 ms each way: the COMMIT reaches the server 400 ms after it is sent, its reply would
    // reach us 400 ms later; the cut at 600 ms falls between the two, with 200 ms to spare.
    proxy.setLatency(400);
    const inserted: number[] = [];
    await db.transaction(async (tx) => {
      const result = await tx.query(
        "INSERT INTO items (id) VALUES ('only') ON CONFLICT DO NOTHING",
      );
      inserted.push(result.rowCount ?? -1);
      if (result.rowCount === 1) await tx.query('UPDATE counter SET n = n + 1 WHERE id = 1');
      if (inserted.length === 1) {
        setTimeout(() => {
          proxy.setLatency(0);
          proxy.cutAll('rst');
        }, 600).unref();
      }
    });
    assert.deepEqual(inserted, [1, 0], 'the second run found the first COMMIT landed');
    assert.deepEqual(await direct(url, 'SELECT id FROM items'), [{ id: 'only' }]);
    assert.deepEqual(await direct(url, 'SELECT n FROM counter'), [{ n: 1 }]);
    await proxy.close();
  });

  test('max_connections reached: the layer backs off (overload) and gets in when a slot frees', async () => {
    const server = await startTestServer({
      settings: { max_connections: 5, superuser_reserved_connections: 1 },
    });
    cleanups.push(() => server.destroy());
    const held: pg.Client[] = [];
    for (let i = 0; i < 5; i++) {
      const c = new pg.Client({ connectionString: server.url() });
      c.on('error', () => undefined);
      await c.connect();
      held.push(c);
    }
    const db = database(server.url());
    const overloads = await countFrom(dbMetrics.retries, { class: 'overload' });
    const call = db.query<{ one: number }>('SELECT 1 AS one');
    await waitFor(async () => (await overloads.delta()) >= 2, {
      message: 'the layer retrying a full server',
    });
    await held.pop()!.end();
    assert.deepEqual((await call).rows, [{ one: 1 }]);
    await Promise.all(held.map((c) => c.end()));
    await server.destroy();
  });

  test('idle and checked-out clients survive a server kill; the next query works', async () => {
    const server = await startTestServer();
    cleanups.push(() => server.destroy());
    const db = database(server.url(), { poolSize: 4 });
    await Promise.all(Array.from({ length: 4 }, () => db.query('SELECT pg_sleep(0.05)')));
    assert.equal(db.pool.idleCount, 4, 'four idle clients');
    const held = await db.pool.connect();
    await held.query('SELECT 1');
    await server.restart('immediate');
    await waitFor(() => db.pool.idleCount === 0, {
      message: 'the dead idle clients removed from the pool',
    });
    // The process is alive (an unhandled 'error' event would have ended it) and the layer works.
    assert.equal((await db.query('SELECT 1 AS one')).rows[0]?.one, 1);
    await assert.rejects(held.query('SELECT 1'), (e: unknown) => {
      assert.equal(classify(e).class, 'connection', String(e));
      return true;
    });
    held.release(true);
    assert.equal((await db.transaction((tx) => tx.query('SELECT 2 AS two'))).rows[0]?.two, 2);
    await server.destroy();
  });
});

describe('settings take effect', () => {
  test(
    'DB_PGBOUNCER: off, the statement_timeout startup parameter is refused; on, the timeout applies per transaction',
    { skip: noPgBouncer },
    async () => {
      const server = await sharedTestServer();
      const url = await server.createDatabase();
      const bouncer = await startPgBouncer(server, { poolMode: 'transaction' });
      cleanups.push(() => bouncer.destroy());
      const statementTimeoutMs = 500;

      // What really happens: PgBouncer refuses the login with 08P01 "unsupported startup
      // parameter: statement_timeout". A configuration error: raised at once, never retried.
      const off = database(bouncer.url(url), { statementTimeoutMs });
      const before = await countFrom(dbMetrics.retries);
      const refused = await timed(() => off.query('SELECT 1'));
      assert.match(
        String((refused.error as Error).message),
        /unsupported startup parameter: statement_timeout/,
      );
      assert.equal((refused.error as { code?: string }).code, '08P01');
      assert.equal(await before.delta(), 0, 'not retried');
      assert.ok(refused.ms < 1_000, `failed at once: ${refused.ms} ms`);

      const on = database(bouncer.url(url), { statementTimeoutMs, pgbouncer: true });
      assert.equal((await on.query('SELECT 1 AS one')).rows[0]?.one, 1);
      const shown = await on.transaction((tx) =>
        tx.query<{ statement_timeout: string }>('SHOW statement_timeout'),
      );
      assert.equal(shown.rows[0]?.statement_timeout, '500ms');
      const retries = await countFrom(dbMetrics.retries);
      const slow = await timed(() =>
        on.transaction((tx) => tx.query(`SELECT pg_sleep(${statementTimeoutMs / 1000 + 1})`)),
      );
      assert.equal(
        (slow.error as { code?: string }).code,
        '57014',
        `statement timeout: ${slow.error}`,
      );
      assert.ok(slow.ms < statementTimeoutMs + 1_000, `cancelled after ${slow.ms} ms`);
      assert.equal(await retries.delta(), 0, 'a statement timeout is not retried');
      await bouncer.destroy();
    },
  );

  test(
    'DB_PGBOUNCER on: a single query outside a transaction gets the statement timeout too',
    {
      skip: noPgBouncer,
    },
    async () => {
      const server = await sharedTestServer();
      const bouncer = await startPgBouncer(server, { poolMode: 'transaction' });
      cleanups.push(() => bouncer.destroy());
      const db = database(bouncer.url(server.url()), { statementTimeoutMs: 300, pgbouncer: true });
      const slow = await timed(() => db.query('SELECT pg_sleep(1.5)'));
      await bouncer.destroy();
      assert.equal(
        (slow.error as { code?: string } | undefined)?.code,
        '57014',
        `took ${slow.ms} ms`,
      );
    },
  );
});

describe('migrations', () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(join(os.tmpdir(), 'unstuck-migrations-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, '001_first.sql'), 'CREATE TABLE first_table (id int PRIMARY KEY);');
    await writeFile(
      join(dir, '002_second.sql'),
      'CREATE TABLE second_table (id int PRIMARY KEY REFERENCES first_table (id));',
    );
    await writeFile(join(dir, 'README.txt'), 'not a migration');
  });

  test('two Databases migrating at once both succeed; each migration is recorded once', async () => {
    const server = await sharedTestServer();
    const url = await server.createDatabase();
    const [a, b] = [database(url), database(url)];
    const results = await Promise.all([migrate(a, dir), migrate(b, dir)]);
    assert.deepEqual(
      results.map((r) => r.version),
      [2, 2],
    );
    const applied = results.map((r) => r.applied.map((m) => m.version)).sort();
    assert.deepEqual(applied, [[], [1, 2]], 'one applied both, the other found nothing to do');
    const rows = await direct<{ version: number; name: string }>(
      url,
      'SELECT version, name FROM unstuck.schema_migrations ORDER BY version',
    );
    assert.deepEqual(rows, [
      { version: 1, name: 'first' },
      { version: 2, name: 'second' },
    ]);
    assert.equal((await direct(url, 'SELECT * FROM second_table')).length, 0, 'tables exist');
    assert.deepEqual((await migrate(a, dir)).applied, [], 'a third run applies nothing');
  });

  test('a schema newer than the known migrations: SchemaTooNewError at once', async () => {
    const server = await sharedTestServer();
    const url = await server.createDatabase();
    const db = database(url);
    await migrate(db, dir);
    await direct(url, "INSERT INTO unstuck.schema_migrations (version, name) VALUES (7, 'future')");
    const retries = await countFrom(dbMetrics.retries);
    await assert.rejects(migrate(db, dir), (e: unknown) => {
      assert.ok(e instanceof SchemaTooNewError, String(e));
      assert.match(e.message, /version 7.*up to 2/);
      return true;
    });
    assert.equal(await retries.delta(), 0);
  });
});
