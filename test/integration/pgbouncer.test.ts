// Checks the PgBouncer harness against a real PgBouncer, and that node-postgres reports its death
// the way /work/shared/notes/postgres-fault-behaviour.md says.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { waitFor } from '../harness/db.js';
import { type PgBouncer, pgbouncerSkipReason, startPgBouncer } from '../harness/pgbouncer.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { within } from '../harness/within.js';

// Throws in CI when pgbouncer is missing: there these tests must run, not skip.
const skip = pgbouncerSkipReason();

let server: TestServer;
let bouncer: PgBouncer;
let databaseUrl: string;
let admin: pg.Client;
const clients: pg.Client[] = [];

/** Every client gets an 'error' listener: without one a dying PgBouncer crashes the process. */
function client(url: string): pg.Client {
  const c = new pg.Client({ connectionString: url });
  c.on('error', () => {});
  clients.push(c);
  return c;
}

/** The faults here show within moments: poll often, give up soon. */
const soon = { timeoutMs: 5_000, intervalMs: 20 };

function onServer(tag: string, sql: string): Promise<pg.QueryResult<{ n: number }>> {
  return admin.query<{ n: number }>(
    `select ${sql} from pg_stat_activity where query like $1 and pid <> pg_backend_pid()`,
    [`%/* ${tag} */%`],
  );
}

/**
 * Starts a query and waits until the server runs it, so the fault hits a query in flight.
 * Wrapped in an object: an async function returning the bare promise would wait for it.
 */
async function inFlight(
  c: pg.Client,
  sql: string,
  tag: string,
): Promise<{ settled: Promise<unknown> }> {
  const settled = c.query(`${sql} /* ${tag} */`).catch((error: unknown) => error);
  await waitFor(
    async () => {
      const { rows } = await onServer(tag, 'count(*)::int as n');
      return (rows[0]?.n ?? 0) > 0;
    },
    { ...soon, message: `${tag} to run on the server` },
  );
  return { settled };
}

describe('PgBouncer (transaction mode)', { skip }, () => {
  before(async () => {
    server = await startTestServer();
    databaseUrl = await server.createDatabase();
    admin = client(databaseUrl);
    await admin.connect();
    bouncer = await startPgBouncer(server);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
    await bouncer?.destroy();
    await server?.destroy();
  });

  test('runs queries and transactions', async () => {
    const c = client(bouncer.url(databaseUrl));
    await c.connect();
    const { rows } = await c.query<{ n: number }>('select 41 + 1 as n');
    assert.equal(rows[0]?.n, 42);
    await c.query('begin');
    await c.query('create temporary table t (x int) on commit drop');
    await c.query('insert into t values (1), (2)');
    const { rows: counted } = await c.query<{ n: number }>('select count(*)::int as n from t');
    assert.equal(counted[0]?.n, 2);
    await c.query('commit');
    await c.end();
  });

  test('SIGKILL fails the in-flight query; after a restart new connections work', async () => {
    const c = client(bouncer.url(databaseUrl));
    await c.connect();
    const { settled } = await inFlight(c, 'select pg_sleep(30)', 'bouncer-kill');
    await bouncer.stop('SIGKILL');
    const error = await within(5000, settled);
    assert.ok(error instanceof Error, 'the query should have failed');
    assert.equal(error.message, 'Connection terminated unexpectedly');

    // stop() waits for the port to be free, so nothing answers there now.
    const refused = client(bouncer.url(databaseUrl));
    await assert.rejects(within(5000, refused.connect()), { code: 'ECONNREFUSED' });

    // PgBouncer's death does not stop the backend's pg_sleep.
    await onServer('bouncer-kill', 'pg_terminate_backend(pid)');

    await bouncer.start();
    const fresh = client(bouncer.url(databaseUrl));
    await fresh.connect();
    const { rows } = await fresh.query<{ n: number }>('select 7 as n');
    assert.equal(rows[0]?.n, 7);
    await fresh.end();
  });

  test('restart(SIGKILL) comes back on the same port', async () => {
    const port = bouncer.port;
    await bouncer.restart('SIGKILL');
    assert.equal(bouncer.port, port);
    const c = client(bouncer.url(databaseUrl));
    await c.connect();
    await c.query('select 1');
    await c.end();
  });

  test('SIGINT lets the in-flight query finish, then stops', async () => {
    const c = client(bouncer.url(databaseUrl));
    await c.connect();
    const { settled } = await inFlight(c, 'select pg_sleep(0.5) as slept', 'bouncer-sigint');
    await bouncer.stop('SIGINT');
    const result = await within(5000, settled);
    assert.ok(!(result instanceof Error), `the query should have finished: ${String(result)}`);
    await bouncer.start();
  });
});
