// Errors produced by a real PostgreSQL server, a real PgBouncer and real sockets, each run
// through classify(). Hand-made error objects appear only where the fault cannot be produced
// on loopback without root network tricks; each such case says so.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { classify, type ErrorClass } from '../../src/db/errors.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { pgbouncerSkipReason, startPgBouncer } from '../harness/pgbouncer.js';
import { freePort } from '../harness/free-port.js';
import { sharedTestServer, startTestServer, type TestServer } from '../harness/server.js';
import { waitFor } from '../harness/db.js';

type PgError = Error & { code?: string; severity?: string; errno?: number; cause?: unknown };

/** A client whose 'error' events are collected instead of crashing the process. */
function client(url: string, config: Omit<pg.ClientConfig, 'connectionString'> = {}) {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000, ...config });
  const events: PgError[] = [];
  const notices: PgError[] = [];
  c.on('error', (error) => events.push(error));
  c.on('notice', (notice) => notices.push(notice as PgError));
  return Object.assign(c, { events, notices });
}
type TestClient = ReturnType<typeof client>;

/** The rejection of `promise`; fails the test if it resolves. */
async function failure(promise: Promise<unknown>): Promise<PgError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error, `rejected with an Error, got ${String(error)}`);
    return error as PgError;
  }
  assert.fail('expected a rejection');
}

function expectClass(
  error: unknown,
  expected: ErrorClass,
  discard: boolean,
  what: { code?: string; message?: RegExp } = {},
): void {
  const e = error as PgError;
  const shown = `${e.code ?? '(no code)'} ${JSON.stringify(e.message)}`;
  if (what.code !== undefined) assert.equal(e.code, what.code, `code of ${shown}`);
  if (what.message) assert.match(e.message, what.message, `message of ${shown}`);
  const got = classify(error);
  assert.equal(got.class, expected, `class of ${shown}`);
  assert.equal(got.discardConnection, discard, `discardConnection of ${shown}`);
}

const closing: TestClient[] = [];
const connected = async (url: string, config: Omit<pg.ClientConfig, 'connectionString'> = {}) => {
  const c = client(url, config);
  closing.push(c);
  await c.connect();
  return c;
};
const pid = async (c: pg.Client) =>
  (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;

/** Waits until backend `of` is waiting on a lock, so the next step really conflicts. */
const waitsOnLock = (admin: pg.Client, of: number) =>
  waitFor(
    async () =>
      (
        await admin.query(
          "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
          [of],
        )
      ).rowCount === 1,
    { timeoutMs: 5_000, message: `backend ${of} waiting on a lock` },
  );

/** Waits until `sql` is running on the server (behind PgBouncer, that is all we can see). */
const runningOn = (server: TestServer, sql: string) =>
  waitFor(
    async () => {
      const admin = client(server.url());
      try {
        await admin.connect();
        const found = await admin.query('SELECT 1 FROM pg_stat_activity WHERE query = $1', [sql]);
        return found.rowCount === 1;
      } finally {
        await admin.end();
      }
    },
    { message: `${sql} running on the server` },
  );

after(async () => {
  await Promise.all(closing.map((c) => c.end().catch(() => undefined)));
});

describe('errors from a running server', () => {
  let server: TestServer;
  let url: string;

  before(async () => {
    server = await sharedTestServer();
    url = await server.createDatabase();
    const setup = await connected(url);
    await setup.query('CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)');
    await setup.query('INSERT INTO t VALUES (1, 0), (2, 0)');
  });

  test('pg_terminate_backend: the in-flight query gets 57P01, the next one "not queryable"', async () => {
    const c = await connected(url);
    const running = failure(c.query('SELECT pg_sleep(30)'));
    await waitFor(
      async () => (await server.terminateBackends(new URL(url).pathname.slice(1))) > 0,
      {
        message: 'a backend to terminate',
      },
    );
    const error = await running;
    expectClass(error, 'connection', true, {
      code: '57P01',
      message: /terminating connection due to administrator command/,
    });
    assert.equal(error.severity, 'FATAL');
    const reuse = await failure(c.query('SELECT 1'));
    expectClass(reuse, 'connection', true, { message: /not queryable/ });
  });

  test('pg_terminate_backend of an idle client: its error events classify as connection', async () => {
    const c = await connected(url);
    await server.terminateBackends(new URL(url).pathname.slice(1));
    await waitFor(() => c.events.length > 0, { message: "the idle client's error event" });
    for (const event of c.events) expectClass(event, 'connection', true);
    assert.ok(
      c.events.some((e) => e.code === '57P01' || /Connection terminated/.test(e.message)),
      c.events.map((e) => `${e.code} ${e.message}`).join('; '),
    );
  });

  test('40001 from two real SERIALIZABLE transactions', async () => {
    const [a, b] = [await connected(url), await connected(url)];
    await a.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
    await b.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
    await a.query('SELECT v FROM t WHERE id = 1');
    await b.query('SELECT v FROM t WHERE id = 1');
    await a.query('UPDATE t SET v = v + 1 WHERE id = 1');
    await a.query('COMMIT');
    const error = await failure(b.query('UPDATE t SET v = v + 1 WHERE id = 1'));
    expectClass(error, 'conflict', false, {
      code: '40001',
      message: /could not serialize access/,
    });
    await b.query('ROLLBACK');
    // The connection is fine afterwards: that is why conflicts keep it.
    assert.equal((await b.query('SELECT 1')).rowCount, 1);
  });

  test('40P01 from a real deadlock', async () => {
    const [a, b, admin] = [await connected(url), await connected(url), await connected(url)];
    for (const c of [a, b]) {
      await c.query("SET deadlock_timeout = '50ms'");
      await c.query('BEGIN');
    }
    const aPid = await pid(a); // before a blocks: a busy client queues further queries
    await a.query('UPDATE t SET v = v + 1 WHERE id = 1');
    await b.query('UPDATE t SET v = v + 1 WHERE id = 2');
    const first = a.query('UPDATE t SET v = v + 1 WHERE id = 2').then(
      () => undefined,
      (error: PgError) => error,
    );
    await waitsOnLock(admin, aPid);
    const second = b.query('UPDATE t SET v = v + 1 WHERE id = 1').then(
      () => undefined,
      (error: PgError) => error,
    );
    const errors = (await Promise.all([first, second])).filter((e) => e !== undefined);
    assert.equal(errors.length, 1, 'exactly one side is chosen as the victim');
    expectClass(errors[0], 'conflict', false, { code: '40P01', message: /deadlock detected/ });
    await Promise.all([a.query('ROLLBACK'), b.query('ROLLBACK')]);
  });

  test('23505 unique violation and 42601 syntax error are permanent, keep the connection', async () => {
    const c = await connected(url);
    expectClass(await failure(c.query('INSERT INTO t VALUES (1, 0)')), 'permanent', false, {
      code: '23505',
    });
    expectClass(await failure(c.query('SELEC 1')), 'permanent', false, { code: '42601' });
    expectClass(await failure(c.query('SELECT 1/0')), 'permanent', false, { code: '22012' });
    assert.equal((await c.query('SELECT 1')).rowCount, 1);
  });

  test('57014 statement timeout is permanent', async () => {
    const c = await connected(url, { statement_timeout: 100 });
    expectClass(await failure(c.query('SELECT pg_sleep(5)')), 'permanent', false, {
      code: '57014',
    });
  });

  test('28P01 wrong password is permanent', async () => {
    const bad = new URL(url);
    bad.password = 'not-the-password';
    const error = await failure(client(bad.toString()).connect());
    expectClass(error, 'permanent', false, {
      code: '28P01',
      message: /password authentication failed/,
    });
  });

  test('3D000 missing database is permanent', async () => {
    const error = await failure(client(server.url('no_such_database')).connect());
    expectClass(error, 'permanent', false, { code: '3D000', message: /does not exist/ });
  });

  test('ECONNREFUSED: nothing listens on the port', async () => {
    const port = await freePort();
    const error = await failure(
      client(`postgres://postgres:x@127.0.0.1:${port}/postgres`).connect(),
    );
    expectClass(error, 'unavailable', true, { code: 'ECONNREFUSED' });
  });

  test('ENOTFOUND: an unknown host is a configuration error', async () => {
    const error = await failure(
      client('postgres://postgres:x@no-such-host.invalid/postgres').connect(),
    );
    // Without a reachable DNS server the resolver says EAI_AGAIN (unavailable) instead.
    if (error.code === 'EAI_AGAIN') expectClass(error, 'unavailable', true);
    else expectClass(error, 'permanent', true, { code: 'ENOTFOUND' });
  });

  test('connect timeout through a blackholed proxy: Client and Pool', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    try {
      proxy.setMode('blackhole');
      const started = Date.now();
      const direct = await failure(
        client(proxy.url(url), { connectionTimeoutMillis: 300 }).connect(),
      );
      assert.ok(Date.now() - started < 3_000, 'the timeout fired');
      expectClass(direct, 'unavailable', true, { message: /timeout expired/ });

      const pool = new pg.Pool({ connectionString: proxy.url(url), connectionTimeoutMillis: 300 });
      pool.on('error', () => undefined);
      const pooled = await failure(pool.query('SELECT 1'));
      expectClass(pooled, 'unavailable', true, {
        message: /Connection terminated due to connection timeout/,
      });
      await pool.end();
    } finally {
      await proxy.close();
    }
  });

  test('TCP cut through the proxy: RST gives ECONNRESET, FIN "Connection terminated"', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    try {
      for (const [how, expected] of [
        ['rst', { code: 'ECONNRESET' }],
        ['fin', { message: /Connection terminated unexpectedly/ }],
      ] as const) {
        const c = await connected(proxy.url(url));
        const running = failure(c.query('SELECT pg_sleep(30)'));
        await waitFor(() => proxy.connections > 0, { message: 'a proxied connection' });
        proxy.cutAll(how);
        expectClass(await running, 'connection', true, expected);
      }
    } finally {
      await proxy.close();
    }
  });

  test('client query_timeout over a blackholed link: "Query read timeout", discard', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    try {
      const c = await connected(proxy.url(url), { query_timeout: 300 });
      proxy.setMode('blackhole');
      expectClass(await failure(c.query('SELECT 1')), 'connection', true, {
        message: /Query read timeout/,
      });
    } finally {
      await proxy.close();
    }
  });

  test('the local pool is full: "timeout exceeded when trying to connect" is overload, keep', async () => {
    const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 200 });
    pool.on('error', () => undefined);
    const held = await pool.connect();
    try {
      expectClass(await failure(pool.query('SELECT 1')), 'overload', false, {
        message: /timeout exceeded when trying to connect/,
      });
    } finally {
      held.release();
      await pool.end();
    }
  });

  test('a query on an ended client: "Client was closed and is not queryable"', async () => {
    const c = client(url);
    await c.connect();
    await c.end();
    expectClass(await failure(c.query('SELECT 1')), 'connection', true, {
      message: /Client was closed/,
    });
  });

  test('57P02: another backend crashed (SIGKILL), the server restarts all backends', async () => {
    // On its own server: the crash restart would hit every other test's connections.
    const own = await startTestServer();
    try {
      const [victim, bystander] = [await connected(own.url()), await connected(own.url())];
      const running = failure(bystander.query('SELECT pg_sleep(30)'));
      process.kill(await pid(victim), 'SIGKILL');
      const error = await running;
      // node-postgres surfaces 57P02 only as a notice; the query rejects with the socket close.
      expectClass(error, 'connection', true, { message: /Connection terminated unexpectedly/ });
      assert.ok(
        bystander.notices.some((n) => n.code === '57P02'),
        `notice 57P02 seen: ${bystander.notices.map((n) => n.code).join(',')}`,
      );
      // The server comes back by itself after crash recovery.
      await waitFor(async () => (await connected(own.url())).query('SELECT 1'), {
        timeoutMs: 15_000,
        message: 'the server back after crash recovery',
      });
    } finally {
      await own.destroy();
    }
  });
});

describe('errors from a server stopping, full or starting', () => {
  test('immediate shutdown: the in-flight query breaks (57P01 as a notice), then ECONNREFUSED', async () => {
    const server = await startTestServer();
    try {
      const c = await connected(server.url());
      const running = failure(c.query('SELECT pg_sleep(30)'));
      await server.stop('immediate');
      // Usually the socket's close; under load sometimes a reset (the backend died with our
      // bytes unread), which shared/notes does not mention. Both are connection errors.
      const error = await running;
      expectClass(error, 'connection', true);
      assert.ok(
        /Connection terminated unexpectedly/.test(error.message) || error.code === 'ECONNRESET',
        `${error.code} ${error.message}`,
      );
      // The server's goodbye, when it gets out first, is a notice (not an Error).
      for (const notice of c.notices) assert.equal(notice.code, '57P01', notice.message);
      expectClass(await failure(client(server.url()).connect()), 'unavailable', true, {
        code: 'ECONNREFUSED',
      });
    } finally {
      await server.destroy();
    }
  });

  test('fast shutdown: the in-flight query gets 57P01', async () => {
    const server = await startTestServer();
    try {
      const c = await connected(server.url());
      const running = failure(c.query('SELECT pg_sleep(30)'));
      await server.stop('fast');
      expectClass(await running, 'connection', true, {
        code: '57P01',
        message: /terminating connection due to administrator command/,
      });
    } finally {
      await server.destroy();
    }
  });

  test('smart shutdown: a new connection gets 57P03 "the database system is shutting down"', async () => {
    const server = await startTestServer();
    try {
      const held = await connected(server.url());
      const stopping = server.stop('smart');
      const error = await waitFor(
        async () => {
          const c = client(server.url());
          try {
            await c.connect(); // before the postmaster got the signal
            await c.end();
            return undefined;
          } catch (e) {
            return (e as PgError).code === '57P03' ? (e as PgError) : undefined;
          }
        },
        { timeoutMs: 10_000, message: '57P03 while the server waits for its last client' },
      );
      expectClass(error, 'unavailable', true, {
        code: '57P03',
        message: /the database system is shutting down/,
      });
      await held.end();
      await stopping;
    } finally {
      await server.destroy();
    }
  });

  test('53300: max_connections reached', async () => {
    const server = await startTestServer({
      settings: { max_connections: 5, superuser_reserved_connections: 1 },
    });
    try {
      // As superuser the reserved slot is ours too: five connections fill the server.
      const held: TestClient[] = [];
      let error: PgError | undefined;
      for (let i = 0; i < 10 && !error; i++) {
        const c = client(server.url());
        try {
          await c.connect();
          held.push(c);
        } catch (e) {
          error = e as PgError;
        }
      }
      assert.ok(error, 'a connection was refused');
      assert.equal(held.length, 5, 'refused after five connections');
      expectClass(error, 'overload', true, {
        code: '53300',
        message: /too many clients already/,
      });
      await Promise.all(held.map((c) => c.end()));
    } finally {
      await server.destroy();
    }
  });
});

const noPgBouncer = pgbouncerSkipReason();

describe('errors through a real PgBouncer', { skip: noPgBouncer }, () => {
  // Unlike shared/notes, a server that is simply down (connection refused) does not make
  // PgBouncer 1.18 answer "server login has been failing": a client with no warm pool waits in
  // login, and a query waits in PgBouncer's queue until query_wait_timeout. The message comes
  // when the server *rejects* logins, as it does while shutting down (57P03).
  test('server refusing logins behind PgBouncer: "server login has been failing"', async () => {
    const server = await startTestServer();
    const bouncer = await startPgBouncer(server, {
      // A query already queued when the login fails waits for this, not for the message.
      settings: { query_wait_timeout: 1 },
    });
    try {
      const url = bouncer.url(server.url());
      await (await connected(url)).query('SELECT 1'); // PgBouncer now knows the server
      const held = await connected(server.url()); // keeps a smart shutdown from finishing
      const stopping = server.stop('smart');
      await waitFor(
        async () => {
          const c = client(server.url());
          const refused = await c.connect().then(
            () => c.end().then(() => false),
            (e: PgError) => e.code === '57P03',
          );
          return refused;
        },
        { message: 'the server refusing new connections' },
      );
      // Drop PgBouncer's server connection: its next login then meets the shutdown.
      await held.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
      );
      const error = await waitFor(
        async () => {
          const e = await failure((await connected(url)).query('SELECT 1'));
          return /server login has been failing/.test(e.message) ? e : undefined;
        },
        { timeoutMs: 10_000, message: '"server login has been failing" from PgBouncer' },
      );
      expectClass(error, 'unavailable', true, {
        code: '08P01',
        message: /server login has been failing, try again later \(server_login_retry\)/,
      });
      await held.end();
      await stopping;
    } finally {
      await bouncer.destroy();
      await server.destroy();
    }
  });

  test('server down behind a warm PgBouncer: the query waits, then "query_wait_timeout"', async () => {
    const server = await startTestServer();
    const bouncer = await startPgBouncer(server, { settings: { query_wait_timeout: 2 } });
    try {
      const url = bouncer.url(server.url());
      await (await connected(url)).query('SELECT 1');
      await server.stop('fast');
      const c = await connected(url); // PgBouncer answers the login itself
      const started = Date.now();
      const error = await failure(c.query('SELECT 1'));
      assert.ok(Date.now() - started >= 1_500, `waited ${Date.now() - started} ms in the queue`);
      expectClass(error, 'overload', true, { code: '08P01', message: /query_wait_timeout/ });
    } finally {
      await bouncer.destroy();
      await server.destroy();
    }
  });

  test('server down behind a cold PgBouncer: the login waits until the connect timeout', async () => {
    const server = await startTestServer();
    const bouncer = await startPgBouncer(server);
    try {
      await server.stop('fast');
      const error = await failure(
        client(bouncer.url(server.url()), { connectionTimeoutMillis: 1_000 }).connect(),
      );
      expectClass(error, 'unavailable', true, { message: /timeout expired/ });
    } finally {
      await bouncer.destroy();
      await server.destroy();
    }
  });

  test('immediate stop behind PgBouncer: the in-flight query gets "server conn crashed?"', async () => {
    const server = await startTestServer();
    const bouncer = await startPgBouncer(server, { poolMode: 'transaction' });
    try {
      const c = await connected(bouncer.url(server.url()));
      const running = failure(c.query('SELECT pg_sleep(30)'));
      await runningOn(server, 'SELECT pg_sleep(30)');
      await server.stop('immediate');
      expectClass(await running, 'connection', true, {
        code: '08P01',
        message: /server conn crashed\?/,
      });
    } finally {
      await bouncer.destroy();
      await server.destroy();
    }
  });

  test('pg_terminate_backend behind PgBouncer: 57P01 is passed through', async () => {
    const server = await sharedTestServer();
    const url = await server.createDatabase();
    const bouncer = await startPgBouncer(server, { poolMode: 'transaction' });
    try {
      const c = await connected(bouncer.url(url));
      const running = failure(c.query('SELECT pg_sleep(30)'));
      const db = new URL(url).pathname.slice(1);
      await waitFor(async () => (await server.terminateBackends(db)) > 0, {
        message: 'the backend behind PgBouncer',
      });
      const error = await running;
      expectClass(error, 'connection', true);
      assert.ok(
        error.code === '57P01' || /server conn crashed/.test(error.message),
        `${error.code} ${error.message}`,
      );
    } finally {
      await bouncer.destroy();
    }
  });

  test('PgBouncer max_client_conn reached: "no more connections allowed" is overload', async () => {
    const server = await sharedTestServer();
    const bouncer = await startPgBouncer(server, { settings: { max_client_conn: 2 } });
    try {
      const url = bouncer.url(server.url());
      await connected(url);
      await connected(url);
      const error = await failure(client(url).connect());
      expectClass(error, 'overload', true, { message: /no more connections allowed/ });
    } finally {
      await bouncer.destroy();
    }
  });

  test('PgBouncer query_wait_timeout: a query queued behind a busy pool is overload', async () => {
    const server = await sharedTestServer();
    const bouncer = await startPgBouncer(server, {
      settings: { default_pool_size: 1, query_wait_timeout: 1 },
    });
    try {
      const url = bouncer.url(server.url());
      const holder = await connected(url);
      await holder.query('BEGIN');
      await holder.query('SELECT 1'); // the one server connection is now this transaction's
      const waiting = await connected(url);
      const error = await failure(waiting.query('SELECT 1'));
      expectClass(error, 'overload', true, { message: /query_wait_timeout/ });
      await holder.query('ROLLBACK');
    } finally {
      await bouncer.destroy();
    }
  });

  test('PgBouncer SIGKILL: the in-flight query breaks (reset or terminated), then ECONNREFUSED', async () => {
    const server = await sharedTestServer();
    const bouncer = await startPgBouncer(server);
    try {
      const c = await connected(bouncer.url(server.url()));
      const running = failure(c.query('SELECT pg_sleep(30)'));
      await runningOn(server, 'SELECT pg_sleep(30)');
      await bouncer.stop('SIGKILL');
      // Unlike shared/notes ("Connection terminated unexpectedly"), this usually comes as a
      // reset: the killed process's socket is closed by the kernel with unread bytes in it.
      const error = await running;
      expectClass(error, 'connection', true);
      assert.ok(
        error.code === 'ECONNRESET' || /Connection terminated unexpectedly/.test(error.message),
        `${error.code} ${error.message}`,
      );
      expectClass(await failure(client(bouncer.url(server.url())).connect()), 'unavailable', true, {
        code: 'ECONNREFUSED',
      });
    } finally {
      await bouncer.destroy();
    }
  });

  // A configuration error, not a broken connection: retrying cannot make PgBouncer accept it.
  test('PgBouncer rejects a statement_timeout startup parameter: permanent (a configuration error)', async () => {
    const server = await sharedTestServer();
    const bouncer = await startPgBouncer(server);
    try {
      const error = await failure(
        client(bouncer.url(server.url()), { statement_timeout: 1000 }).connect(),
      );
      assert.match(error.message, /unsupported startup parameter: statement_timeout/);
      assert.equal(error.code, '08P01');
      expectClass(error, 'permanent', true);
    } finally {
      await bouncer.destroy();
    }
  });
});

describe('errors that cannot be produced on loopback (hand-made, shaped like node-postgres)', () => {
  // A real EPIPE needs a write racing the peer's close, ETIMEDOUT a lost SYN or keepalive
  // probes over minutes, EHOSTUNREACH/ENETUNREACH a routing table, EAI_AGAIN a failing DNS
  // server. Node reports them as a system error with `code` (and errno, syscall).
  const system = (code: string, syscall = 'connect') =>
    Object.assign(new Error(`${syscall} ${code} 10.0.0.1:5432`), { code, errno: -1, syscall });

  for (const [code, expected] of [
    ['EPIPE', 'connection'],
    ['ETIMEDOUT', 'connection'],
    ['EHOSTUNREACH', 'unavailable'],
    ['ENETUNREACH', 'unavailable'],
    ['EAI_AGAIN', 'unavailable'],
  ] as const) {
    test(`${code} is ${expected}`, () => expectClass(system(code), expected, true, { code }));
  }

  test('"server shutting down" from PgBouncer is unavailable', () => {
    // PgBouncer says this to a client it disconnects during its own SHUTDOWN; the timing is
    // too narrow to hit reliably.
    const error = Object.assign(new Error('server shutting down'), { code: '08P01' });
    expectClass(error, 'unavailable', true);
  });

  test('anything that is not an Error is permanent', () => {
    for (const value of ['boom', 42, null, undefined, { code: '57P01' }]) {
      assert.equal(classify(value).class, 'permanent', String(value));
    }
  });
});
