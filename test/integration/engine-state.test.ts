// The engine's state machine against a real PostgreSQL: the transition guard, every
// compare-and-set of the queue (claim, heartbeat, finish, hand back), the fan-in, the recovery
// sweep, and the plans of the claim and sweep queries on a large backlog.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Database, Queryable, Result, Row } from '../../src/db/database.js';
import { migrate } from '../../src/db/migrate.js';
import {
  claimFiles,
  finishFiles,
  handBack,
  heartbeat,
  type ClaimedFile,
  type HeldFile,
  type Outcome,
} from '../../src/engine/queue.js';
import { sweep } from '../../src/engine/recovery.js';
import { testDatabase, waitFor, withSeed } from '../harness/db.js';
import { seedExecution } from '../harness/seed-execution.js';
import { sharedTestServer, type TestServer } from '../harness/server.js';

let server: TestServer;
const opened: Database[] = [];
const urls = new WeakMap<Database, string>();

before(async () => {
  server = await sharedTestServer();
});
after(async () => {
  for (const db of opened) await db.close().catch(() => undefined);
});

/** A fresh, migrated database for one test. */
async function freshDatabase(poolSize = 8): Promise<Database> {
  const url = await server.createDatabase();
  const db = testDatabase(url, { poolSize });
  urls.set(db, url);
  opened.push(db);
  await migrate(db);
  return db;
}

/** Another pool on the same database, so concurrent calls really run on separate connections. */
function samePlace(db: Database, poolSize = 4): Database {
  const other = testDatabase(urls.get(db)!, { poolSize });
  opened.push(other);
  return other;
}

function ok(file: HeldFile, result: unknown = { path: file.id }): Outcome {
  return {
    id: file.id,
    attempt: file.attempt,
    ok: true,
    retryable: false,
    sha256: 'ab'.repeat(32),
    result,
    timings: { step: 1 },
    error: null,
    retryDelaySeconds: 0,
  };
}

function failure(file: HeldFile, retryable: boolean, error = 'it broke'): Outcome {
  return { ...ok(file), ok: false, retryable, result: null, error, sha256: null };
}

interface FileRow {
  id: string;
  status: string;
  attempt: number;
  lease_owner: string | null;
  lease_expires_at: Date | null;
  finished_at: Date | null;
  error: string | null;
  results: number;
}

async function fileRow(db: Database, id: string): Promise<FileRow> {
  const { rows } = await db.query<FileRow>(
    `SELECT f.id::text, f.status, f.attempt, f.lease_owner, f.lease_expires_at, f.finished_at, f.error,
            (SELECT count(*)::int FROM unstuck.file_results r WHERE r.file_execution_id = f.id) AS results
     FROM unstuck.file_executions f WHERE f.id = $1`,
    [id],
  );
  return rows[0]!;
}

interface ExecutionRow {
  status: string;
  total: number;
  completed: number;
  failed: number;
  stopped: number;
  finished_at: Date | null;
}

async function executionRow(db: Database, id: string): Promise<ExecutionRow> {
  const { rows } = await db.query<ExecutionRow>(
    'SELECT status, total, completed, failed, stopped, finished_at FROM unstuck.workflow_executions WHERE id = $1',
    [id],
  );
  return rows[0]!;
}

/** I2: the execution's counters are what its file executions say, and I3: results match COMPLETED. */
async function assertConsistent(db: Database, executionId: string): Promise<ExecutionRow> {
  const execution = await executionRow(db, executionId);
  const { rows } = await db.query<{ status: string; n: number }>(
    `SELECT status, count(*)::int AS n FROM unstuck.file_executions WHERE execution_id = $1 GROUP BY status`,
    [executionId],
  );
  const count = (s: string) => rows.find((r) => r.status === s)?.n ?? 0;
  assert.deepEqual(
    {
      completed: execution.completed,
      failed: execution.failed,
      stopped: execution.stopped,
      total: execution.total,
    },
    {
      completed: count('COMPLETED'),
      failed: count('ERROR'),
      stopped: count('STOPPED'),
      total: rows.reduce((sum, r) => sum + r.n, 0),
    },
    'counters equal a GROUP BY of file statuses',
  );
  const { rows: bad } = await db.query<{ id: string; status: string; results: number }>(
    `SELECT f.id::text, f.status, count(r.*)::int AS results
     FROM unstuck.file_executions f LEFT JOIN unstuck.file_results r ON r.file_execution_id = f.id
     WHERE f.execution_id = $1
     GROUP BY f.id HAVING count(r.*) <> CASE WHEN f.status = 'COMPLETED' THEN 1 ELSE 0 END`,
    [executionId],
  );
  assert.deepEqual(bad, [], 'exactly one result per COMPLETED file and none for the others');
  return execution;
}

/** Moves leases into the past, as if their workers had gone quiet for longer than the lease. */
async function expireLeases(db: Database, ids: string[]): Promise<void> {
  await db.query(
    `UPDATE unstuck.file_executions SET lease_expires_at = now() - interval '1 second'
     WHERE id = ANY($1::bigint[]) AND status = 'EXECUTING'`,
    [ids],
  );
}

const ids = (files: HeldFile[]) => files.map((f) => f.id).sort();

async function rejection(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (error) {
    return error as Error & { code?: string };
  }
  assert.fail('expected the statement to be refused');
}

describe('transition guard', () => {
  let db: Database;
  let executionId: string;
  before(async () => {
    db = await freshDatabase();
    executionId = await seedExecution(db, { files: 6 });
  });

  /** A file of the execution put into `status` by allowed transitions only. */
  async function fileIn(status: 'COMPLETED' | 'STOPPED' | 'ERROR'): Promise<string> {
    const [file] = await claimFiles(db, 'guard-owner', 1, executionId);
    assert.ok(file, 'a file to claim');
    await db.query(
      `UPDATE unstuck.file_executions SET status = $2, finished_at = now() WHERE id = $1`,
      [file.id, status],
    );
    return file.id;
  }

  const setStatus = (id: string, status: string, attempt = 'attempt') =>
    db.query(`UPDATE unstuck.file_executions SET status = $2, attempt = ${attempt} WHERE id = $1`, [
      id,
      status,
    ]);

  for (const final of ['COMPLETED', 'STOPPED'] as const) {
    test(`${final} never changes again: a direct UPDATE raises`, async () => {
      const id = await fileIn(final);
      for (const to of ['PENDING', 'EXECUTING', 'COMPLETED', 'ERROR', 'STOPPED']) {
        if (to === final) continue;
        for (const attempt of ['attempt', 'attempt + 1']) {
          const error = await rejection(setStatus(id, to, attempt));
          assert.equal(error.code, '23514', `${final} -> ${to}: check_violation`);
          assert.match(error.message, new RegExp(`cannot go from ${final} to ${to}`));
        }
      }
      assert.equal((await fileRow(db, id)).status, final);
    });
  }

  test('ERROR goes back to PENDING only with a higher attempt', async () => {
    const id = await fileIn('ERROR');
    const before = await fileRow(db, id);
    for (const attempt of ['attempt', 'attempt - 1']) {
      const error = await rejection(setStatus(id, 'PENDING', attempt));
      assert.equal(error.code, '23514');
    }
    for (const to of ['EXECUTING', 'COMPLETED', 'STOPPED']) {
      assert.equal((await rejection(setStatus(id, to, 'attempt + 1'))).code, '23514', to);
    }
    await setStatus(id, 'PENDING', 'attempt + 1');
    const after = await fileRow(db, id);
    assert.equal(after.status, 'PENDING');
    assert.equal(after.attempt, before.attempt + 1);
  });

  test('PENDING cannot skip EXECUTING to COMPLETED', async () => {
    const { rows } = await db.query<{ id: string }>(
      `SELECT id::text FROM unstuck.file_executions WHERE execution_id = $1 AND status = 'PENDING' LIMIT 1`,
      [executionId],
    );
    const error = await rejection(setStatus(rows[0]!.id, 'COMPLETED'));
    assert.equal(error.code, '23514');
  });
});

describe('finishFiles compare-and-set', () => {
  let db: Database;
  before(async () => {
    db = await freshDatabase();
  });

  test('a wrong owner, a wrong attempt or a non-EXECUTING row changes nothing: fencedOff', async () => {
    const executionId = await seedExecution(db, { files: 3 });
    const claimed = await claimFiles(db, 'owner-a', 2, executionId);
    assert.equal(claimed.length, 2);
    const [first, second] = claimed as [ClaimedFile, ClaimedFile];
    const { rows } = await db.query<{ id: string }>(
      `SELECT id::text FROM unstuck.file_executions WHERE execution_id = $1 AND status = 'PENDING'`,
      [executionId],
    );
    const pending = { id: rows[0]!.id, attempt: 1 };
    const before = await Promise.all([first, second, pending].map((f) => fileRow(db, f.id)));
    const executionBefore = await executionRow(db, executionId);

    const attempts = [
      { owner: 'owner-b', outcomes: [ok(first), failure(second, false)] },
      { owner: 'owner-a', outcomes: [ok({ ...first, attempt: first.attempt + 1 })] },
      { owner: 'owner-a', outcomes: [failure({ ...second, attempt: second.attempt - 1 }, true)] },
      { owner: 'owner-a', outcomes: [ok(pending)] },
      { owner: 'owner-b', outcomes: [ok(pending)] },
    ];
    for (const { owner, outcomes } of attempts) {
      const report = await finishFiles(db, owner, outcomes);
      assert.deepEqual(report.recorded, [], `${owner}: nothing recorded`);
      assert.deepEqual(ids(report.fencedOff), ids(outcomes), `${owner}: all fenced off`);
      assert.deepEqual(report.finalized, []);
    }
    const after = await Promise.all([first, second, pending].map((f) => fileRow(db, f.id)));
    assert.deepEqual(after, before, 'the rows are untouched');
    assert.deepEqual(await executionRow(db, executionId), executionBefore);
    const { rows: results } = await db.query('SELECT 1 FROM unstuck.file_results');
    assert.equal(results.length, 0, 'no result was written');
  });

  test('a late worker whose lease was taken over is fenced off; the new owner records', async () => {
    const executionId = await seedExecution(db, { files: 1, maxAttempts: 3 });
    const [late] = await claimFiles(db, 'late', 1, executionId);
    assert.ok(late);
    await expireLeases(db, [late.id]);
    assert.equal((await sweep(db)).requeued, 1);
    const [current] = await claimFiles(db, 'current', 1, executionId);
    assert.equal(current?.id, late.id);
    assert.equal(current.attempt, late.attempt + 1);

    const lateReport = await finishFiles(db, 'late', [ok(late, { by: 'late' })]);
    assert.deepEqual(ids(lateReport.fencedOff), [late.id]);
    assert.deepEqual(lateReport.recorded, []);
    const currentReport = await finishFiles(db, 'current', [ok(current, { by: 'current' })]);
    assert.deepEqual(ids(currentReport.recorded), [late.id]);
    assert.deepEqual(currentReport.finalized, [{ id: executionId, status: 'COMPLETED' }]);

    const { rows } = await db.query<{ result: unknown }>(
      'SELECT result FROM unstuck.file_results WHERE file_execution_id = $1',
      [late.id],
    );
    assert.deepEqual(rows, [{ result: { by: 'current' } }], 'only the current owner’s result');
    await assertConsistent(db, executionId);
  });

  test('a re-run after the first commit landed reports recorded and writes nothing twice', async () => {
    const executionId = await seedExecution(db, { files: 4, maxAttempts: 3 });
    const claimed = await claimFiles(db, 'owner', 4, executionId);
    assert.equal(claimed.length, 4);
    const [a, b, c, d] = claimed as [ClaimedFile, ClaimedFile, ClaimedFile, ClaimedFile];
    // Completed, failed for good, failed with attempts left, and failed at its last attempt.
    await db.query('UPDATE unstuck.file_executions SET max_attempts = attempt WHERE id = $1', [
      d.id,
    ]);
    const outcomes = [ok(a), failure(b, false), failure(c, true), failure(d, true)];

    const first = await finishFiles(db, 'owner', outcomes);
    assert.deepEqual(ids(first.recorded), ids(outcomes));
    assert.deepEqual(first.fencedOff, []);
    const rowsAfterFirst = await Promise.all(claimed.map((f) => fileRow(db, f.id)));
    assert.deepEqual(
      rowsAfterFirst.map((r) => [r.status, r.attempt]),
      [
        ['COMPLETED', a.attempt],
        ['ERROR', b.attempt],
        ['PENDING', c.attempt + 1],
        ['ERROR', d.attempt],
      ],
    );
    const executionAfterFirst = await executionRow(db, executionId);

    for (let rerun = 1; rerun <= 2; rerun++) {
      const again = await finishFiles(db, 'owner', outcomes);
      assert.deepEqual(
        ids(again.recorded),
        ids(outcomes),
        `re-run ${rerun}: read back as recorded`,
      );
      assert.deepEqual(again.fencedOff, [], `re-run ${rerun}: nothing fenced off`);
      assert.deepEqual(again.finalized, []);
    }
    assert.deepEqual(await Promise.all(claimed.map((f) => fileRow(db, f.id))), rowsAfterFirst);
    assert.deepEqual(await executionRow(db, executionId), executionAfterFirst, 'counted once');
    assert.equal(rowsAfterFirst[0]!.results, 1, 'one result for the completed file');
    await assertConsistent(db, executionId);
  });

  test('a re-run of a landed retryable failure reads back as recorded even once another worker holds the next attempt', async () => {
    const executionId = await seedExecution(db, { files: 1, maxAttempts: 3 });
    const [file] = await claimFiles(db, 'first', 1, executionId);
    assert.ok(file);
    const outcome = failure(file, true);
    assert.deepEqual(ids((await finishFiles(db, 'first', [outcome])).recorded), [file.id]);
    assert.equal((await claimFiles(db, 'second', 1, executionId))[0]?.id, file.id);
    const again = await finishFiles(db, 'first', [outcome]);
    assert.deepEqual(ids(again.recorded), [file.id], 'first’s outcome did land');
  });

  test('outcomes of one batch are judged one by one', async () => {
    const executionId = await seedExecution(db, { files: 3 });
    const mine = await claimFiles(db, 'mine', 2, executionId);
    const theirs = await claimFiles(db, 'theirs', 1, executionId);
    const report = await finishFiles(
      db,
      'mine',
      [...mine, ...theirs].map((f) => ok(f)),
    );
    assert.deepEqual(ids(report.recorded), ids(mine));
    assert.deepEqual(ids(report.fencedOff), ids(theirs));
    assert.equal((await fileRow(db, theirs[0]!.id)).status, 'EXECUTING');
    await assertConsistent(db, executionId);
  });

  test('a stop requested while a file runs makes its outcome STOPPED, with no result', async () => {
    const executionId = await seedExecution(db, { files: 2 });
    const [running] = await claimFiles(db, 'owner', 1, executionId);
    assert.ok(running);
    await db.query('UPDATE unstuck.workflow_executions SET stop_requested = true WHERE id = $1', [
      executionId,
    ]);
    await db.query(
      `UPDATE unstuck.file_executions SET status = 'STOPPED' WHERE execution_id = $1 AND status = 'PENDING'`,
      [executionId],
    );
    await db.query('UPDATE unstuck.workflow_executions SET stopped = 1 WHERE id = $1', [
      executionId,
    ]);
    const report = await finishFiles(db, 'owner', [ok(running)]);
    assert.deepEqual(ids(report.recorded), [running.id]);
    assert.deepEqual(report.finalized, [{ id: executionId, status: 'STOPPED' }]);
    const row = await fileRow(db, running.id);
    assert.equal(row.status, 'STOPPED');
    assert.equal(row.results, 0);
    await assertConsistent(db, executionId);
  });
});

describe('heartbeat and hand back', () => {
  let db: Database;
  before(async () => {
    db = await freshDatabase();
  });

  test('heartbeat renews the leases still held and returns the lost ones', async () => {
    const executionId = await seedExecution(db, { files: 3, leaseSeconds: 30 });
    const claimed = await claimFiles(db, 'owner', 3, executionId);
    const [kept, takenOver, finishedElsewhere] = claimed as [ClaimedFile, ClaimedFile, ClaimedFile];
    // One expires and goes to another worker; one is, oddly, known under a wrong attempt.
    await expireLeases(db, [takenOver.id]);
    await sweep(db);
    const stolen = await claimFiles(db, 'thief', 1, executionId);
    assert.deepEqual(ids(stolen), [takenOver.id]);
    await db.query(
      `UPDATE unstuck.file_executions SET lease_expires_at = now() + interval '1 second' WHERE id = $1`,
      [kept.id],
    );
    const before = await fileRow(db, kept.id);

    const lost = await heartbeat(db, 'owner', [
      kept,
      takenOver,
      { id: finishedElsewhere.id, attempt: finishedElsewhere.attempt + 1 },
    ]);
    assert.deepEqual(ids(lost), ids([takenOver, finishedElsewhere]));
    const after = await fileRow(db, kept.id);
    assert.ok(
      after.lease_expires_at!.getTime() > before.lease_expires_at!.getTime() + 20_000,
      'the kept lease was renewed by about its length',
    );
    assert.equal((await fileRow(db, takenOver.id)).lease_owner, 'thief', 'the thief keeps it');
    assert.deepEqual(await heartbeat(db, 'owner', []), []);
  });

  test('handBack returns held files to PENDING at the same attempt, and only the holder’s', async () => {
    const executionId = await seedExecution(db, { files: 3 });
    const claimed = await claimFiles(db, 'owner', 3, executionId);
    const [a, b, c] = claimed as [ClaimedFile, ClaimedFile, ClaimedFile];
    assert.equal(await handBack(db, 'intruder', [a, b]), 0, 'not the intruder’s to give');
    assert.equal(await handBack(db, 'owner', [{ ...a, attempt: a.attempt + 1 }]), 0);
    assert.equal(await handBack(db, 'owner', [a, b]), 2);
    for (const f of [a, b]) {
      const row = await fileRow(db, f.id);
      assert.equal(row.status, 'PENDING');
      assert.equal(row.attempt, f.attempt, 'a hand back is not a failed attempt');
      assert.equal(row.lease_owner, null);
      assert.equal(row.lease_expires_at, null);
    }
    assert.equal((await fileRow(db, c.id)).status, 'EXECUTING');
    assert.equal(await handBack(db, 'owner', [a, b]), 0, 'a second hand back changes nothing');
    const reclaimed = await claimFiles(db, 'next', 3, executionId);
    assert.deepEqual(ids(reclaimed), ids([a, b]));
    // The one who handed back is now fenced off from finishing them.
    const late = await finishFiles(db, 'owner', [ok(a)]);
    assert.deepEqual(ids(late.fencedOff), [a.id]);
  });
});

describe('claim', () => {
  test('concurrent claimers with SKIP LOCKED never get the same file', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 400 });
    const pools = [db, samePlace(db), samePlace(db), samePlace(db)];
    const got = new Map<string, string>();
    let duplicates = 0;
    await Promise.all(
      pools.flatMap((pool, p) =>
        [0, 1].map(async (k) => {
          const owner = `claimer-${p}-${k}`;
          for (;;) {
            const claimed = await claimFiles(pool, owner, 7);
            if (claimed.length === 0) return;
            for (const f of claimed) {
              if (got.has(f.id)) duplicates++;
              got.set(f.id, owner);
            }
          }
        }),
      ),
    );
    assert.equal(duplicates, 0, 'no file claimed twice');
    assert.equal(got.size, 400, 'every file claimed');
    const { rows } = await db.query<{ id: string; lease_owner: string; status: string }>(
      'SELECT id::text, lease_owner, status FROM unstuck.file_executions WHERE execution_id = $1',
      [executionId],
    );
    for (const row of rows) {
      assert.equal(row.status, 'EXECUTING');
      assert.equal(row.lease_owner, got.get(row.id), `file ${row.id} held by its claimer`);
    }
    assert.equal((await executionRow(db, executionId)).status, 'EXECUTING');
  });

  test('a file waiting out its retry delay is not claimed early', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 1 });
    const [file] = await claimFiles(db, 'owner', 1, executionId);
    assert.ok(file);
    await finishFiles(db, 'owner', [{ ...failure(file, true), retryDelaySeconds: 3600 }]);
    assert.deepEqual(await claimFiles(db, 'owner', 10, executionId), []);
    await db.query('UPDATE unstuck.file_executions SET available_at = now() WHERE id = $1', [
      file.id,
    ]);
    const [again] = await claimFiles(db, 'owner', 10, executionId);
    assert.equal(again?.attempt, file.attempt + 1);
  });
});

describe('fan-in', () => {
  test('200 files finished by 8 concurrent owners: finalized exactly once, counters exact', async () => {
    const db = await freshDatabase();
    const pools = [db, ...Array.from({ length: 7 }, () => samePlace(db, 1))];
    for (let round = 1; round <= 5; round++) {
      const executionId = await seedExecution(db, { files: 200, maxAttempts: 1 });
      const claims = await Promise.all(
        pools.map((pool, i) => claimFiles(pool, `owner-${i}`, 25, executionId)),
      );
      assert.deepEqual(
        claims.map((c) => c.length),
        Array(8).fill(25),
      );
      // Failures are for good (one attempt). In odd rounds every seventh file fails; in even
      // rounds two in three do, so whichever call comes last may carry more failures than
      // completions.
      const fails = (k: number) => (round % 2 === 1 ? k % 7 === 3 : k % 3 !== 0);
      const reports = await Promise.all(
        claims.map((files, i) =>
          finishFiles(
            pools[i]!,
            `owner-${i}`,
            files.map((f, k) => (fails(k) ? failure(f, true) : ok(f))),
          ),
        ),
      );
      const finalizing = reports.filter((r) => r.finalized.length > 0);
      assert.equal(finalizing.length, 1, `round ${round}: exactly one call finalized`);
      assert.deepEqual(finalizing[0]!.finalized, [{ id: executionId, status: 'COMPLETED' }]);
      assert.equal(
        reports.reduce((n, r) => n + r.recorded.length, 0),
        200,
      );
      const execution = await assertConsistent(db, executionId);
      assert.equal(execution.status, 'COMPLETED');
      assert.equal(
        execution.failed,
        8 * Array.from({ length: 25 }, (_, k) => k).filter(fails).length,
      );
      assert.ok(execution.finished_at, 'finished_at set');
    }
  });

  test('an execution whose files all failed ends ERROR', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 5, maxAttempts: 1 });
    const files = await claimFiles(db, 'owner', 5, executionId);
    const report = await finishFiles(
      db,
      'owner',
      files.map((f) => failure(f, false)),
    );
    assert.deepEqual(report.finalized, [{ id: executionId, status: 'ERROR' }]);
    const execution = await assertConsistent(db, executionId);
    assert.equal(execution.status, 'ERROR');
    assert.ok(execution.finished_at);
  });
});

describe('recovery sweep', () => {
  test('an expired lease goes back to PENDING with attempt + 1, then to ERROR after max attempts', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 2, maxAttempts: 2, leaseSeconds: 0.2 });
    const claimed = await claimFiles(db, 'dead-worker', 2, executionId);
    const [a, b] = claimed as [ClaimedFile, ClaimedFile];
    // b completes; a's worker dies and its lease runs out by itself.
    await finishFiles(db, 'dead-worker', [ok(b)]);
    assert.deepEqual(await sweep(db), { requeued: 0, ended: 0, finalized: 0 }, 'not yet expired');

    const first = await waitFor(
      async () => {
        const r = await sweep(db);
        return r.requeued > 0 && r;
      },
      { timeoutMs: 5_000, message: 'the lease to expire and be swept' },
    );
    assert.deepEqual(first, { requeued: 1, ended: 0, finalized: 0 });
    let row = await fileRow(db, a.id);
    assert.equal(row.status, 'PENDING');
    assert.equal(row.attempt, a.attempt + 1);
    assert.equal(row.lease_owner, null);
    assert.equal(row.error, 'lease expired');

    const [again] = await claimFiles(db, 'dead-again', 1, executionId);
    assert.equal(again?.attempt, 2);
    const second = await waitFor(
      async () => {
        const r = await sweep(db);
        return r.ended > 0 && r;
      },
      { timeoutMs: 5_000, message: 'the last attempt’s lease to expire' },
    );
    assert.deepEqual(second, { requeued: 0, ended: 1, finalized: 0 });
    row = await fileRow(db, a.id);
    assert.equal(row.status, 'ERROR');
    assert.equal(row.attempt, 2, 'no attempt beyond the last');
    assert.equal(row.error, 'lease expired');
    assert.ok(row.finished_at);
    const execution = await assertConsistent(db, executionId);
    assert.equal(execution.status, 'COMPLETED', 'one file completed, one failed');
    assert.ok(execution.finished_at);
    // The dead worker's late outcome is fenced off.
    assert.deepEqual(ids((await finishFiles(db, 'dead-again', [ok(again)])).fencedOff), [a.id]);
  });

  test('an expired file of a stopped execution ends STOPPED', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 1 });
    const [file] = await claimFiles(db, 'owner', 1, executionId);
    await db.query('UPDATE unstuck.workflow_executions SET stop_requested = true WHERE id = $1', [
      executionId,
    ]);
    await expireLeases(db, [file!.id]);
    assert.deepEqual(await sweep(db), { requeued: 0, ended: 1, finalized: 0 });
    assert.equal((await fileRow(db, file!.id)).status, 'STOPPED');
    const execution = await assertConsistent(db, executionId);
    assert.equal(execution.status, 'STOPPED');
  });

  test('sweeps in parallel take each expired row exactly once', async () => {
    const db = await freshDatabase();
    const executionId = await seedExecution(db, { files: 600, maxAttempts: 5 });
    const claimed = await claimFiles(db, 'gone', 600, executionId);
    assert.equal(claimed.length, 600);
    await expireLeases(db, ids(claimed));
    const pools = [db, samePlace(db, 2), samePlace(db, 2), samePlace(db, 2)];
    const reports = await Promise.all(
      pools.flatMap((pool) =>
        [0, 1].map(async () => {
          let requeued = 0;
          for (;;) {
            const r = await sweep(pool, 40);
            if (r.requeued + r.ended === 0) return requeued;
            requeued += r.requeued;
          }
        }),
      ),
    );
    assert.equal(
      reports.reduce((a, b) => a + b, 0),
      600,
      withSeed(`each expired row swept once, per sweeper: ${reports.join(', ')}`),
    );
    const { rows } = await db.query<{ status: string; attempt: number; n: number }>(
      `SELECT status, attempt, count(*)::int AS n FROM unstuck.file_executions
       WHERE execution_id = $1 GROUP BY status, attempt`,
      [executionId],
    );
    assert.deepEqual(rows, [{ status: 'PENDING', attempt: 2, n: 600 }]);
  });
});

/** The SQL a queue function sends, captured by handing it a stand-in database. */
async function capturedSql(
  call: (db: Database) => Promise<unknown>,
): Promise<{ sql: string; params: unknown[] }[]> {
  const sent: { sql: string; params: unknown[] }[] = [];
  const tx: Queryable = {
    query: <R extends Row>(sql: string, params: unknown[] = []) => {
      sent.push({ sql, params });
      return Promise.resolve({ rows: [], rowCount: 0 } as unknown as Result<R>);
    },
  };
  const fake = {
    query: tx.query,
    transaction: <T>(fn: (q: Queryable) => Promise<T>) => fn(tx),
  } as unknown as Database;
  await call(fake);
  return sent;
}

interface PlanNode {
  'Node Type': string;
  'Index Name'?: string;
  'Relation Name'?: string;
  'Plan Rows'?: number;
  Plans?: PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

async function explain(db: Database, sql: string, params: unknown[]): Promise<PlanNode[]> {
  const { rows } = await db.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(
    `EXPLAIN (FORMAT JSON) ${sql}`,
    params,
  );
  return nodes(rows[0]!['QUERY PLAN'][0].Plan);
}

function describePlan(plan: PlanNode[]): string {
  return plan
    .map((n) => `${n['Node Type']}${n['Index Name'] ? ` using ${n['Index Name']}` : ''}`)
    .join(' / ');
}

describe('query plans on a 100,000-file backlog', () => {
  let db: Database;
  let executionIds: string[];
  before(async () => {
    db = await freshDatabase();
    // Two executions of 50,000 PENDING files each, a few hundred EXECUTING (some expired) and
    // some finished, loaded in one statement each.
    executionIds = [await seedExecution(db, { files: 0 }), await seedExecution(db, { files: 0 })];
    await db.query(
      `INSERT INTO unstuck.file_executions
         (organization_id, execution_id, path, size_bytes, max_attempts, lease_seconds, available_at)
       SELECT 1, e.id, 'p-' || g, 10, 3, 30, now() - make_interval(secs => g % 1000)
       FROM unnest($1::bigint[]) AS e(id), generate_series(1, 50000) g`,
      [executionIds],
    );
    await db.query(
      `INSERT INTO unstuck.file_executions
         (organization_id, execution_id, path, size_bytes, max_attempts, lease_seconds, status,
          lease_owner, lease_expires_at, started_at)
       SELECT 1, $1, 'x-' || g, 10, 3, 30, 'EXECUTING', 'w', now() + make_interval(secs => g - 100), now()
       FROM generate_series(1, 300) g`,
      [executionIds[0]],
    );
    await db.query(
      `UPDATE unstuck.workflow_executions e SET total = (SELECT count(*) FROM unstuck.file_executions f
         WHERE f.execution_id = e.id) WHERE id = ANY($1::bigint[])`,
      [executionIds],
    );
    await db.query('ANALYZE unstuck.file_executions');
    await db.query('ANALYZE unstuck.workflow_executions');
  });

  const assertNoBigSort = (plan: PlanNode[]) => {
    const sorts = plan.filter((n) => /Sort/.test(n['Node Type']) && (n['Plan Rows'] ?? 0) > 1000);
    assert.deepEqual(sorts, [], `no Sort over the backlog: ${describePlan(plan)}`);
    const seqScans = plan.filter(
      (n) => n['Node Type'] === 'Seq Scan' && n['Relation Name'] === 'file_executions',
    );
    assert.deepEqual(seqScans, [], `no Seq Scan of file_executions: ${describePlan(plan)}`);
  };

  /** The partial indexes of file_executions whose predicate is `status = '<status>'`. */
  async function partialIndexes(status: string): Promise<string[]> {
    const { rows } = await db.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
       WHERE i.indrelid = 'unstuck.file_executions'::regclass
         AND pg_get_expr(i.indpred, i.indrelid) = $1`,
      [`(status = '${status}'::text)`],
    );
    assert.ok(rows.length > 0, `a partial index on status = '${status}' exists`);
    return rows.map((r) => r.name);
  }

  for (const scoped of [false, true]) {
    test(`the claim uses the partial PENDING index${scoped ? ' (one execution)' : ''}`, async () => {
      const indexes = await partialIndexes('PENDING');
      const [claim] = await capturedSql((fake) =>
        claimFiles(fake, 'w', 50, scoped ? executionIds[1] : undefined),
      );
      const plan = await explain(db, claim!.sql, claim!.params);
      assert.ok(
        plan.some((n) => indexes.includes(n['Index Name'] ?? '')),
        `uses ${indexes.join(' or ')}: ${describePlan(plan)}`,
      );
      assertNoBigSort(plan);
    });
  }

  test('the sweep uses the partial EXECUTING index', async () => {
    const indexes = await partialIndexes('EXECUTING');
    const [expired, finalize] = await capturedSql((fake) => sweep(fake));
    const plan = await explain(db, expired!.sql, expired!.params);
    assert.ok(
      plan.some((n) => indexes.includes(n['Index Name'] ?? '')),
      `uses ${indexes.join(' or ')}: ${describePlan(plan)}`,
    );
    assertNoBigSort(plan);
    // Finalizing looks at executions only (a small table): no scan of the file backlog.
    assertNoBigSort(await explain(db, finalize!.sql, finalize!.params));
  });

  test('claim and sweep really run fast on the backlog', async () => {
    const started = performance.now();
    const claimed = await claimFiles(db, 'w', 100);
    const claimMs = performance.now() - started;
    assert.equal(claimed.length, 100);
    const sweepStarted = performance.now();
    const report = await sweep(db);
    const sweepMs = performance.now() - sweepStarted;
    assert.equal(report.requeued, 100, 'the 100 leases already in the past');
    // Generous bounds for a loaded 2-core machine; a full scan plus sort is far slower.
    assert.ok(claimMs < 500, `claim took ${claimMs.toFixed(1)} ms`);
    assert.ok(sweepMs < 500, `sweep took ${sweepMs.toFixed(1)} ms`);
  });
});
