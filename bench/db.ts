// The database layer's cost on a healthy server: the same workload through raw node-postgres
// (pg.Pool) and through Database, interleaved round by round against one throwaway server.
//
// Each side runs in its own child process, so neither pays for the other: the layer's
// AsyncLocalStorage, once used, installs promise hooks that slow every promise in its process,
// and a raw pool sharing that process would hide that cost.
import { type ChildProcess, fork } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { Database, databaseOptions, type DatabaseOptions } from '../src/db/database.js';
import { seededRandom } from '../src/db/retry-policy.js';

const ROWS = 10_000;
const IN_FLIGHT = 8;
const POOL_SIZE = 8;
const ROUNDS = 7;
const OPS: Record<Workload, number> = { read: 4_000, update: 2_000 };
const WARM_UP_OPS = 1_000;
const SLICES = 4;

type Side = 'raw' | 'db';
type Workload = 'read' | 'update';
const workloads: Workload[] = ['read', 'update'];

const READ = 'SELECT id, v, payload FROM bench WHERE id = $1';
const UPDATE = 'UPDATE bench SET v = v + 1 WHERE id = $1';

type Request = { type: 'run'; workload: Workload; ops: number; seed: number } | { type: 'close' };
type Reply =
  | { type: 'ready' }
  | { type: 'done'; ms: number; cpuMs: number }
  | { type: 'error'; message: string };

/** The layer's options as unstuck would build them from a default environment. */
function layerOptions(url: string): DatabaseOptions {
  return { ...databaseOptions(loadConfig({}), url), poolSize: POOL_SIZE };
}

/** Raw pg.Pool with the same connection settings, so only the layer's code differs. */
function rawPool(url: string): pg.Pool {
  const o = layerOptions(url);
  const pool = new pg.Pool({
    connectionString: o.url,
    connectionTimeoutMillis: o.connectTimeoutMs,
    query_timeout: o.queryTimeoutMs || undefined,
    statement_timeout: o.statementTimeoutMs || undefined,
    application_name: 'unstuck',
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    max: POOL_SIZE,
    idleTimeoutMillis: o.idleTimeoutMs,
  });
  pool.on('error', () => undefined);
  return pool;
}

interface Runner {
  read(id: number): Promise<unknown>;
  update(id: number): Promise<unknown>;
  close(): Promise<void>;
}

function runner(side: Side, url: string): Runner {
  if (side === 'raw') {
    const pool = rawPool(url);
    return {
      read: (id) => pool.query(READ, [id]),
      update: async (id) => {
        const client = await pool.connect();
        try {
          await client.query('BEGIN');
          await client.query(UPDATE, [id]);
          await client.query('COMMIT');
        } catch (error) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw error;
        } finally {
          client.release();
        }
      },
      close: () => pool.end(),
    };
  }
  const db = new Database(layerOptions(url));
  return {
    read: (id) => db.query(READ, [id], { name: 'bench.read' }),
    update: (id) => db.transaction((tx) => tx.query(UPDATE, [id]), { name: 'bench.update' }),
    close: () => db.close(),
  };
}

/** `ops` operations, IN_FLIGHT at a time, on random rows; returns the wall time in ms. */
async function run(r: Runner, workload: Workload, ops: number, seed: number): Promise<number> {
  const random = seededRandom(seed);
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next++ < ops) await r[workload](1 + Math.floor(random() * ROWS));
    }),
  );
  return performance.now() - started;
}

/** The child side: one runner, driven by the parent over IPC. */
async function child(side: Side, url: string): Promise<void> {
  const r = runner(side, url);
  const send = (reply: Reply) => process.send?.(reply);
  // Open every pooled connection before anything is timed.
  await Promise.all(Array.from({ length: POOL_SIZE }, (_, i) => r.read(i + 1)));
  process.on('message', (request: Request) => {
    if (request.type === 'close') {
      void r.close().finally(() => process.exit(0));
      return;
    }
    const cpu = process.cpuUsage();
    run(r, request.workload, request.ops, request.seed).then(
      (ms) => {
        const used = process.cpuUsage(cpu);
        send({ type: 'done', ms, cpuMs: (used.user + used.system) / 1000 });
      },
      (error: unknown) => send({ type: 'error', message: String(error) }),
    );
  });
  send({ type: 'ready' });
}

const CHILD_SIDE = 'UNSTUCK_BENCH_DB_SIDE';
const CHILD_URL = 'UNSTUCK_BENCH_DB_URL';

class SideProcess {
  private pending?: { resolve: (reply: Reply) => void; reject: (error: Error) => void };

  private constructor(
    readonly side: Side,
    private readonly proc: ChildProcess,
  ) {
    proc.on('message', (reply: Reply) => {
      const pending = this.pending;
      this.pending = undefined;
      pending?.resolve(reply);
    });
    proc.on('exit', (code, signal) => {
      this.pending?.reject(new Error(`bench side ${side} exited (${code ?? signal})`));
    });
  }

  static async start(side: Side, url: string): Promise<SideProcess> {
    const proc = fork(fileURLToPath(import.meta.url), [], {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, [CHILD_SIDE]: side, [CHILD_URL]: url, LOG_LEVEL: 'warn' },
    });
    const s = new SideProcess(side, proc);
    const first = await s.next();
    if (first.type !== 'ready')
      throw new Error(`bench side ${side} did not start: ${JSON.stringify(first)}`);
    return s;
  }

  private next(): Promise<Reply> {
    return new Promise((resolve, reject) => (this.pending = { resolve, reject }));
  }

  async run(workload: Workload, ops: number, seed: number): Promise<{ ms: number; cpuMs: number }> {
    const reply = this.next();
    this.proc.send({ type: 'run', workload, ops, seed } satisfies Request);
    const result = await reply;
    if (result.type !== 'done')
      throw new Error(`bench side ${this.side}: ${JSON.stringify(result)}`);
    return { ms: result.ms, cpuMs: result.cpuMs };
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((resolve) => this.proc.once('exit', resolve));
    this.proc.send({ type: 'close' } satisfies Request);
    await exited;
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

const pad = (text: string | number, width: number) => String(text).padStart(width);

export async function benchDb(): Promise<void> {
  // Imported here: the harness registers exit hooks that the child sides do not need.
  const { startTestServer } = await import('../test/harness/server.js');
  const server = await startTestServer();
  const sides: SideProcess[] = [];
  try {
    const url = await server.createDatabase();
    const setup = new pg.Client({ connectionString: url });
    setup.on('error', () => undefined);
    await setup.connect();
    await setup.query(`CREATE TABLE bench (id int PRIMARY KEY, v int NOT NULL, payload text NOT NULL);
      INSERT INTO bench SELECT i, 0, md5(i::text) FROM generate_series(1, ${ROWS}) i`);
    await setup.query('VACUUM ANALYZE bench');
    const { rows } = await setup.query<{ server_version: string }>('SHOW server_version');
    await setup.end();

    const require = createRequire(import.meta.url);
    const pgVersion = (require('pg/package.json') as { version: string }).version;
    const cpus = os.cpus();
    const load = () =>
      os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ');
    console.log(
      `machine: ${cpus.length} cores (${cpus[0]?.model.trim() ?? 'unknown'}), loadavg ${load()}, ` +
        `node ${process.version}, PostgreSQL ${rows[0]?.server_version}, pg ${pgVersion}`,
    );
    console.log(
      `workload: ${IN_FLIGHT} in flight, pool size ${POOL_SIZE}, ${ROWS} rows; read = ${OPS.read} ` +
        `primary-key SELECTs, update = ${OPS.update} BEGIN/UPDATE/COMMIT per side per round; ` +
        `${ROUNDS} rounds, each in ${SLICES} slices alternating raw/db (ABBA), ` +
        `each side in its own process`,
    );

    const bySide = {
      raw: await SideProcess.start('raw', url),
      db: await SideProcess.start('db', url),
    };
    sides.push(bySide.raw, bySide.db);
    for (const w of workloads) {
      for (const side of [bySide.raw, bySide.db]) await side.run(w, WARM_UP_OPS, 0);
    }

    console.log('');
    console.log(
      [
        'round'.padEnd(5),
        'workload'.padEnd(8),
        pad('raw ops/s', 10),
        pad('db ops/s', 10),
        pad('db/raw', 7),
        pad('raw cpu µs/op', 14),
        pad('db cpu µs/op', 13),
      ].join(' '),
    );
    const ratios: number[] = [];
    const cpuRatios: Record<Workload, number[]> = { read: [], update: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const w of workloads) {
        const total = { raw: { ms: 0, cpuMs: 0 }, db: { ms: 0, cpuMs: 0 } };
        // ABBA slices: a load change during the round hits both sides alike.
        for (let slice = 0; slice < SLICES; slice++) {
          const first: Side = (round + Math.floor((slice + 1) / 2)) % 2 ? 'raw' : 'db';
          const second: Side = first === 'raw' ? 'db' : 'raw';
          for (const side of [first, second]) {
            const seed = round * 100 + slice;
            const t = await bySide[side].run(w, OPS[w] / SLICES, seed);
            total[side].ms += t.ms;
            total[side].cpuMs += t.cpuMs;
          }
        }
        const ratio = total.db.ms / total.raw.ms;
        ratios.push(ratio);
        cpuRatios[w].push(total.db.cpuMs / total.raw.cpuMs);
        const rate = (side: Side) => Math.round((OPS[w] / total[side].ms) * 1000);
        const cpu = (side: Side) => ((total[side].cpuMs * 1000) / OPS[w]).toFixed(1);
        console.log(
          [
            String(round).padEnd(5),
            w.padEnd(8),
            pad(rate('raw'), 10),
            pad(rate('db'), 10),
            pad(ratio.toFixed(3), 7),
            pad(cpu('raw'), 14),
            pad(cpu('db'), 13),
          ].join(' '),
        );
      }
    }
    console.log('');
    for (const w of workloads) {
      const mine = ratios.filter((_, i) => workloads[i % workloads.length] === w);
      console.log(
        `median db/raw ${w}: time ${median(mine).toFixed(3)}, client cpu ${median(cpuRatios[w]).toFixed(3)}`,
      );
    }
    console.log(`loadavg after: ${load()}`);
    console.log(`ratio db/raw: ${median(ratios).toFixed(2)}`);
  } finally {
    await Promise.all(sides.map((s) => s.close()));
    await server.destroy();
  }
}

const childSide = process.env[CHILD_SIDE];
if (childSide === 'raw' || childSide === 'db') {
  await child(childSide, process.env[CHILD_URL] ?? '');
}
