import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Logger, makeWorkerUtils, run as runGraphile } from 'graphile-worker';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { loadConfig } from '../src/config.js';
import { Unstuck } from '../src/unstuck.js';
import { startTestServer, type TestServer } from '../test/harness/server.js';
import { machineLine, median } from './report.js';

/**
 * Throughput of no-op work at 8-way concurrency, all on one server in one run: the engine
 * (10,000 file executions of a no-op step), raw node-postgres (one single-row UPDATE
 * transaction per file: the least durable work a file needs), graphile-worker with its local
 * queue and batched completion, and pg-boss with batched fetch.
 */

const files = Number(process.env.BENCH_FILES ?? 10_000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const concurrency = 8;

type Side = (server: TestServer) => Promise<number>; // items per second

async function untilZero(url: string, sql: string): Promise<void> {
  const client = new pg.Client(url);
  client.on('error', () => undefined);
  await client.connect();
  try {
    for (;;) {
      const { rows } = await client.query<{ n: number }>(sql);
      if (rows[0]!.n === 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    await client.end();
  }
}

async function sampleFolder(): Promise<string> {
  const dir = join(tmpdir(), `unstuck-bench-${process.pid}`);
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < files; i += 500) {
    const batch = Array.from({ length: Math.min(500, files - i) }, (_, k) => i + k);
    await Promise.all(batch.map((n) => writeFile(join(dir, `file-${n}.txt`), `file ${n}\n`)));
  }
  return dir;
}

const engine =
  (folder: string): Side =>
  async (server) => {
    const u = await Unstuck.open({
      config: loadConfig({ DATABASE_URL: await server.createDatabase(), LOG_LEVEL: 'warn' }),
    });
    try {
      const { executionId } = await u.submit({
        name: 'bench',
        source: { type: 'local', path: folder },
        steps: ['noop'],
      });
      const started = performance.now();
      const worker = u.worker({ concurrency, executionId });
      worker.start();
      const summary = await u.wait(executionId, { intervalMs: 10 });
      const rate = files / ((performance.now() - started) / 1000);
      await worker.stop();
      if (summary.completed !== files)
        throw new Error(`engine completed ${summary.completed} of ${files}`);
      return rate;
    } finally {
      await u.close();
    }
  };

const raw: Side = async (server) => {
  const pool = new pg.Pool({ connectionString: await server.createDatabase(), max: concurrency });
  pool.on('error', () => undefined);
  try {
    await pool.query('CREATE TABLE files (id int PRIMARY KEY, status text NOT NULL)');
    await pool.query("INSERT INTO files SELECT g, 'PENDING' FROM generate_series(1, $1) g", [
      files,
    ]);
    let next = 1;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        const client = await pool.connect();
        try {
          for (let id = next++; id <= files; id = next++) {
            await client.query('BEGIN');
            await client.query("UPDATE files SET status = 'COMPLETED' WHERE id = $1", [id]);
            await client.query('COMMIT');
          }
        } finally {
          client.release();
        }
      }),
    );
    return files / ((performance.now() - started) / 1000);
  } finally {
    await pool.end();
  }
};

// Logging every job to the console would measure the console.
const silent = new Logger(() => () => undefined);

const graphile: Side = async (server) => {
  const connectionString = await server.createDatabase();
  const utils = await makeWorkerUtils({ connectionString, logger: silent });
  await utils.migrate();
  await utils.addJobs(Array.from({ length: files }, () => ({ identifier: 'noop', payload: {} })));
  await utils.release();
  const started = performance.now();
  const runner = await runGraphile({
    connectionString,
    concurrency,
    noHandleSignals: true,
    taskList: { noop: async () => undefined },
    logger: silent,
    preset: { worker: { localQueue: { size: 50 }, completeJobBatchDelay: 0 } },
  });
  await untilZero(connectionString, 'SELECT count(*)::int AS n FROM graphile_worker._private_jobs');
  const rate = files / ((performance.now() - started) / 1000);
  await runner.stop();
  return rate;
};

const pgBoss: Side = async (server) => {
  const connectionString = await server.createDatabase();
  const boss = new PgBoss({ connectionString, max: concurrency + 2 });
  boss.on('error', () => undefined);
  await boss.start();
  await boss.createQueue('noop');
  await boss.insert(Array.from({ length: files }, () => ({ name: 'noop', data: {} })));
  const started = performance.now();
  for (let i = 0; i < concurrency; i++) {
    await boss.work('noop', { batchSize: 500, pollingIntervalSeconds: 0.5 }, async () => undefined);
  }
  await untilZero(
    connectionString,
    "SELECT count(*)::int AS n FROM pgboss.job WHERE name = 'noop' AND state <> 'completed'",
  );
  const rate = files / ((performance.now() - started) / 1000);
  await boss.stop({ graceful: false, wait: true });
  return rate;
};

export async function benchEngine(): Promise<void> {
  // Default durability, as a user's server has it: one commit is one WAL flush.
  const server = await startTestServer({ settings: { fsync: 'on', full_page_writes: 'on' } });
  try {
    console.log(await machineLine(server.url()));
    const folder = await sampleFolder();
    const sides: [string, Side][] = [
      ['engine', engine(folder)],
      ['raw', raw],
      ['graphile-worker', graphile],
      ['pg-boss', pgBoss],
    ];
    const results = new Map<string, number[]>(sides.map(([name]) => [name, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const [name, side] of sides) {
        const rate = await side(server);
        results.get(name)!.push(rate);
        console.log(`round ${round} ${name.padEnd(16)} ${rate.toFixed(0).padStart(7)} per s`);
      }
    }
    const m = (name: string) => median(results.get(name)!);
    for (const [name] of sides)
      console.log(`median ${name.padEnd(16)} ${m(name).toFixed(0).padStart(7)} per s`);
    console.log(`ratio engine/graphile-worker: ${(m('engine') / m('graphile-worker')).toFixed(2)}`);
    console.log(`ratio engine/pg-boss: ${(m('engine') / m('pg-boss')).toFixed(2)}`);
    console.log(`ratio engine/raw: ${(m('engine') / m('raw')).toFixed(2)}`);
  } finally {
    await server.destroy();
  }
}
