// What one chaos run runs against: a throwaway PostgreSQL server, and in front of it either a
// fault proxy or a real PgBouncer in transaction mode, which is the path the workers use. The
// harness itself watches the database directly, around whatever breaks on the workers' path.
import pg from 'pg';
import { FaultProxy } from '../test/harness/fault-proxy.js';
import { startPgBouncer, type PgBouncer } from '../test/harness/pgbouncer.js';
import { startTestServer, type TestServer } from '../test/harness/server.js';

export type Path = 'proxy' | 'pgbouncer';

export interface Cluster {
  server: TestServer;
  /** The run's database, directly on the server. */
  databaseUrl: string;
  database: string;
  /** The same database through the proxy or PgBouncer: what the workers connect to. */
  workerUrl: string;
  path: Path;
  proxy?: FaultProxy;
  pgbouncer?: PgBouncer;
  /** A direct pool for watching and checking; it survives restarts (it reconnects). */
  admin: pg.Pool;
  destroy(): Promise<void>;
}

export async function startCluster(path: Path): Promise<Cluster> {
  const server = await startTestServer();
  const cleanup: (() => Promise<unknown>)[] = [() => server.destroy()];
  const destroy = async () => {
    for (const step of cleanup.reverse()) await step().catch(() => undefined);
  };
  try {
    const databaseUrl = await server.createDatabase();
    const database = new URL(databaseUrl).pathname.slice(1);
    const admin = new pg.Pool({
      connectionString: databaseUrl,
      max: 2,
      connectionTimeoutMillis: 5_000,
      application_name: 'chaos-admin',
    });
    admin.on('error', () => undefined); // an idle connection killed by a fault must not crash us
    cleanup.push(() => admin.end());
    let proxy: FaultProxy | undefined;
    let pgbouncer: PgBouncer | undefined;
    let workerUrl: string;
    if (path === 'pgbouncer') {
      pgbouncer = await startPgBouncer(server, { poolMode: 'transaction' });
      cleanup.push(() => pgbouncer!.destroy());
      workerUrl = pgbouncer.url(databaseUrl);
    } else {
      proxy = await FaultProxy.start({ port: server.port });
      cleanup.push(() => proxy!.close());
      workerUrl = proxy.url(databaseUrl);
    }
    return { server, databaseUrl, database, workerUrl, path, proxy, pgbouncer, admin, destroy };
  } catch (error) {
    await destroy();
    throw error;
  }
}
