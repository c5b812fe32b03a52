// The faults of the matrix. Each one is injected while files are being processed and returns
// when the fault is over (the server is back, the proxy passes again, a replacement worker
// runs): from then on the system must recover by itself.
import type { Cluster, Path } from './cluster.js';
import type { Random } from './random.js';
import { pause, waitFor } from './wait.js';
import type { WorkerFleet, WorkerProcess } from './workers.js';

export interface FaultContext {
  cluster: Cluster;
  fleet: WorkerFleet;
  rng: Random;
  /** Records what the fault did, for the run's report. */
  note(text: string): void;
}

export interface Fault {
  name: string;
  /** What the workers connect through. */
  path: Path;
  description: string;
  inject(ctx: FaultContext): Promise<void>;
}

/** Repeats `hit` at seeded intervals for a seeded number of seconds. */
async function storm(
  ctx: FaultContext,
  seconds: [number, number],
  gapMs: [number, number],
  hit: () => Promise<number>,
): Promise<void> {
  const end = Date.now() + ctx.rng.between(seconds[0], seconds[1]) * 1000;
  let hits = 0;
  let victims = 0;
  while (Date.now() < end) {
    victims += await hit();
    hits++;
    await pause(ctx.rng.int(gapMs[0], gapMs[1]));
  }
  ctx.note(`${hits} hits, ${victims} connections`);
}

/** Waits (bounded) until the worker holds claimed files, so that killing it strands work. */
async function holdingFiles(ctx: FaultContext, worker: WorkerProcess): Promise<void> {
  const held = await waitFor(
    async () => {
      const { rows } = await ctx.cluster.admin.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM unstuck.file_executions
         WHERE status = 'EXECUTING' AND lease_owner LIKE '%:' || $1::text || ':%'`,
        [worker.pid],
      );
      return rows[0]!.n;
    },
    { timeoutMs: 15_000, intervalMs: 10, message: `${worker.name} to hold files` },
  ).catch(() => 0);
  ctx.note(`${worker.name} held ${held} files`);
}

/** A seeded live worker, once it holds files. */
async function victim(ctx: FaultContext): Promise<WorkerProcess> {
  const worker = ctx.rng.pick(ctx.fleet.live);
  await holdingFiles(ctx, worker);
  return worker;
}

const proxyOf = (ctx: FaultContext) => {
  if (!ctx.cluster.proxy) throw new Error('this fault needs the fault proxy');
  return ctx.cluster.proxy;
};
const pgbouncerOf = (ctx: FaultContext) => {
  if (!ctx.cluster.pgbouncer) throw new Error('this fault needs PgBouncer');
  return ctx.cluster.pgbouncer;
};

export const faults: Fault[] = [
  {
    name: 'none',
    path: 'proxy',
    description: 'no fault: the reference the other rows compare with',
    inject: async () => undefined,
  },
  {
    name: 'terminate-storm',
    path: 'proxy',
    description: 'pg_terminate_backend on every backend every 100-500 ms for 4-6 s',
    inject: (ctx) =>
      storm(ctx, [4, 6], [100, 500], () =>
        ctx.cluster.server.terminateBackends(ctx.cluster.database),
      ),
  },
  {
    name: 'restart-immediate',
    path: 'proxy',
    description: 'pg_ctl stop -m immediate (a crash: recovery from WAL), then start',
    inject: (ctx) => ctx.cluster.server.restart('immediate'),
  },
  {
    name: 'restart-fast',
    path: 'proxy',
    description: 'pg_ctl stop -m fast (backends terminated, clean shutdown), then start',
    inject: (ctx) => ctx.cluster.server.restart('fast'),
  },
  {
    name: 'server-down-10s',
    path: 'proxy',
    description: 'the server stopped (fast) for 10 s, then started',
    inject: async (ctx) => {
      await ctx.cluster.server.stop('fast');
      await pause(10_000);
      await ctx.cluster.server.start();
    },
  },
  {
    name: 'pgbouncer-restart',
    path: 'pgbouncer',
    description: 'PgBouncer SIGKILLed, down 0.2-1.5 s, started again',
    inject: async (ctx) => {
      const pgbouncer = pgbouncerOf(ctx);
      await pgbouncer.stop('SIGKILL');
      const down = ctx.rng.int(200, 1500);
      await pause(down);
      await pgbouncer.start();
      ctx.note(`down ${down} ms`);
    },
  },
  {
    name: 'pgbouncer-server-restart',
    path: 'pgbouncer',
    description: 'the server behind PgBouncer restarted (immediate)',
    inject: (ctx) => ctx.cluster.server.restart('immediate'),
  },
  {
    name: 'pgbouncer-terminate-storm',
    path: 'pgbouncer',
    description: "PgBouncer's server connections terminated every 100-500 ms for 4-6 s",
    inject: (ctx) =>
      storm(ctx, [4, 6], [100, 500], () =>
        ctx.cluster.server.terminateBackends(ctx.cluster.database),
      ),
  },
  {
    name: 'rst-storm',
    path: 'proxy',
    description: 'every connection through the proxy reset (RST) every 100-600 ms for 4-6 s',
    inject: (ctx) =>
      storm(ctx, [4, 6], [100, 600], () => Promise.resolve(proxyOf(ctx).cutAll('rst'))),
  },
  {
    name: 'blackhole-5s',
    path: 'proxy',
    description: 'the proxy holds every byte and new connection for 5 s, then passes again',
    inject: async (ctx) => {
      const proxy = proxyOf(ctx);
      proxy.setMode('blackhole');
      await pause(5_000);
      proxy.setMode('pass');
    },
  },
  {
    name: 'worker-kill',
    path: 'proxy',
    description: 'one worker SIGKILLed while it holds files, then a replacement started',
    inject: async (ctx) => {
      await ctx.fleet.kill(await victim(ctx));
      await ctx.fleet.start();
    },
  },
  {
    name: 'all-workers-kill',
    path: 'proxy',
    description: 'every worker SIGKILLed at once, then as many started again',
    inject: async (ctx) => {
      await victim(ctx);
      const victims = ctx.fleet.live;
      await Promise.all(victims.map((w) => ctx.fleet.kill(w)));
      await ctx.fleet.startMany(victims.length);
    },
  },
  {
    name: 'restart-and-kill',
    path: 'proxy',
    description: 'a worker SIGKILLed and the server restarted (immediate) at the same moment',
    inject: async (ctx) => {
      const worker = await victim(ctx);
      const offset = ctx.rng.int(0, 300);
      ctx.note(`restart ${offset} ms after the kill`);
      await Promise.all([
        ctx.fleet.kill(worker),
        pause(offset).then(() => ctx.cluster.server.restart('immediate')),
      ]);
      await ctx.fleet.start();
    },
  },
];

export function faultNamed(name: string): Fault {
  const fault = faults.find((f) => f.name === name);
  if (!fault) {
    throw new Error(`no fault "${name}"; known: ${faults.map((f) => f.name).join(', ')}`);
  }
  return fault;
}
