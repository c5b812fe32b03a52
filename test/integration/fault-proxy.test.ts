// Checks that FaultProxy produces the faults the rest of the suite relies on, and that
// node-postgres reports them the way /work/shared/notes/postgres-fault-behaviour.md says.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { waitFor } from '../harness/db.js';
import { FaultProxy } from '../harness/fault-proxy.js';
import { startTestServer, type TestServer } from '../harness/server.js';
import { within } from '../harness/within.js';

let server: TestServer;
let databaseUrl: string;
let admin: pg.Client;
const clients: pg.Client[] = [];

/** Every client gets an 'error' listener: without one a cut connection crashes the process. */
function client(url: string, config: Omit<pg.ClientConfig, 'connectionString'> = {}): pg.Client {
  const c = new pg.Client({ connectionString: url, ...config });
  c.on('error', () => {});
  clients.push(c);
  return c;
}

/** The faults here show within moments: poll often, give up soon. */
const soon = { timeoutMs: 5_000, intervalMs: 20 };

/**
 * Starts a long query and waits until the server runs it, so the cut hits a query in flight.
 * Wrapped in an object: an async function returning the bare promise would wait for it.
 */
async function inFlight(c: pg.Client, tag: string): Promise<{ settled: Promise<unknown> }> {
  const settled = c.query(`select pg_sleep(30) /* ${tag} */`).catch((error: unknown) => error);
  await waitFor(async () => (await running(tag)) > 0, {
    ...soon,
    message: `${tag} to run on the server`,
  });
  return { settled };
}

async function running(tag: string): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity where query like $1 and pid <> pg_backend_pid()`,
    [`%/* ${tag} */%`],
  );
  return rows[0]?.n ?? 0;
}

/** A cut does not stop the backend's pg_sleep; end it so it does not outlive the test. */
async function endBackends(tag: string): Promise<void> {
  await admin.query(
    `select pg_terminate_backend(pid) from pg_stat_activity where query like $1 and pid <> pg_backend_pid()`,
    [`%/* ${tag} */%`],
  );
}

async function withProxy(run: (proxy: FaultProxy) => Promise<void>): Promise<void> {
  const proxy = await FaultProxy.start({ port: server.port });
  try {
    await run(proxy);
  } finally {
    await proxy.close();
  }
}

before(async () => {
  server = await startTestServer();
  databaseUrl = await server.createDatabase();
  admin = client(databaseUrl);
  await admin.connect();
});

after(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  await server?.destroy();
});

describe('FaultProxy', () => {
  test('passes queries through', async () => {
    await withProxy(async (proxy) => {
      const c = client(proxy.url(databaseUrl));
      await c.connect();
      const { rows } = await c.query<{ n: number }>('select 41 + 1 as n');
      assert.equal(rows[0]?.n, 42);
      assert.equal(proxy.connections, 1);
      await c.end();
      await waitFor(() => proxy.connections === 0, {
        ...soon,
        message: 'the proxy to see the close',
      });
    });
  });

  test("cutAll('rst') fails the in-flight query with ECONNRESET", async () => {
    await withProxy(async (proxy) => {
      const c = client(proxy.url(databaseUrl));
      await c.connect();
      const { settled } = await inFlight(c, 'rst-cut');
      assert.equal(proxy.cutAll('rst'), 1);
      const error = (await within(5000, settled)) as NodeJS.ErrnoException;
      assert.ok(error instanceof Error, 'the query should have failed');
      assert.equal(error.code, 'ECONNRESET');
      await waitFor(() => proxy.connections === 0, {
        ...soon,
        message: 'the proxy to drop the connection',
      });
      await endBackends('rst-cut');
    });
  });

  test("cutAll('fin') fails the in-flight query with 'Connection terminated unexpectedly'", async () => {
    await withProxy(async (proxy) => {
      const c = client(proxy.url(databaseUrl));
      await c.connect();
      const { settled } = await inFlight(c, 'fin-cut');
      assert.equal(proxy.cutAll('fin'), 1);
      const error = await within(5000, settled);
      assert.ok(error instanceof Error, 'the query should have failed');
      assert.equal(error.message, 'Connection terminated unexpectedly');
      await waitFor(() => proxy.connections === 0, {
        ...soon,
        message: 'the client side to close',
      });
      await endBackends('fin-cut');
    });
  });

  test('blackhole: query_timeout gives "Query read timeout", connect times out', async () => {
    await withProxy(async (proxy) => {
      const c = client(proxy.url(databaseUrl), { query_timeout: 300 });
      await c.connect();
      proxy.setMode('blackhole');

      const started = Date.now();
      await assert.rejects(within(5000, c.query('select 1')), { message: 'Query read timeout' });
      assert.ok(Date.now() - started >= 250, 'failed before query_timeout: not a timeout');

      const late = client(proxy.url(databaseUrl), { connectionTimeoutMillis: 300 });
      const connecting = late.connect();
      // Accepted and held, as a dead path looks to a client: the TCP connect itself succeeds.
      await waitFor(() => proxy.connections === 2, { ...soon, message: 'the held connection' });
      await assert.rejects(within(5000, connecting), /timeout/i);
      await waitFor(() => proxy.connections === 1, {
        ...soon,
        message: 'the timed-out client to go',
      });
      proxy.setMode('pass');
    });
  });

  test('latency delays every round trip by at least the set time', async () => {
    await withProxy(async (proxy) => {
      const c = client(proxy.url(databaseUrl));
      await c.connect();
      const latency = 150;
      proxy.setLatency(latency);
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        await c.query('select 1');
        const elapsed = performance.now() - started;
        assert.ok(elapsed >= latency, `round trip took ${elapsed.toFixed(1)} ms`);
      }
      proxy.setLatency(0);
      // The fastest of a few, so one slow round trip on a loaded machine does not fail it.
      let fastest = Infinity;
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        await c.query('select 1');
        fastest = Math.min(fastest, performance.now() - started);
      }
      assert.ok(fastest < latency, `latency 0 still took ${fastest.toFixed(1)} ms`);
    });
  });

  test('refuse resets new connections and leaves existing ones alone', async () => {
    await withProxy(async (proxy) => {
      const existing = client(proxy.url(databaseUrl));
      await existing.connect();
      proxy.refuse(true);
      const refused = client(proxy.url(databaseUrl));
      await assert.rejects(within(5000, refused.connect()), { code: 'ECONNRESET' });
      await existing.query('select 1');
      proxy.refuse(false);
      const later = client(proxy.url(databaseUrl));
      await later.connect();
      await later.query('select 1');
    });
  });

  test('close() ends held and live connections', async () => {
    const proxy = await FaultProxy.start({ port: server.port });
    const live = client(proxy.url(databaseUrl));
    await live.connect();
    const ended = new Promise((resolve) => live.once('end', resolve));
    proxy.setMode('blackhole');
    const held = client(proxy.url(databaseUrl));
    const connecting = held.connect().catch((error: unknown) => error);
    await waitFor(() => proxy.connections === 2, { ...soon, message: 'the held connection' });
    await within(5000, proxy.close());
    assert.equal(proxy.connections, 0);
    assert.ok((await within(5000, connecting)) instanceof Error);
    await within(5000, ended);
  });
});
