import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { backoffDelay, seededRandom, type RetryBudget } from '../../src/db/retry-policy.js';
import { testSeed, withSeed } from '../harness/db.js';

type RetryClass = Parameters<typeof backoffDelay>[0];

// The shapes retry-policy.ts promises: conflicts start small, unavailable/overload have a floor.
const expected: Record<RetryClass, { scale: number; floor: number }> = {
  conflict: { scale: 0.05, floor: 0 },
  connection: { scale: 1, floor: 0 },
  unavailable: { scale: 1, floor: 0.5 },
  overload: { scale: 1, floor: 0.5 },
};
const classes = Object.keys(expected) as RetryClass[];

const budgets: RetryBudget[] = [
  { maxRetries: 3, baseDelayMs: 1000, maxDelayMs: 30_000, budgetMs: 60_000 }, // the defaults
  { maxRetries: 50, baseDelayMs: 20, maxDelayMs: 500, budgetMs: 30_000 }, // the tests'
  { maxRetries: 10, baseDelayMs: 250, maxDelayMs: 250, budgetMs: 5_000 }, // base = max
  { maxRetries: 1000, baseDelayMs: 1, maxDelayMs: 3_600_000, budgetMs: 86_400_000 },
];

const capOf = (c: RetryClass, retry: number, b: RetryBudget) =>
  Math.min(b.maxDelayMs, b.baseDelayMs * 2 ** (retry - 1) * expected[c].scale);

describe('backoffDelay', () => {
  test('every delay lies in [floor share of cap, cap], never above maxDelay', () => {
    const random = seededRandom(testSeed);
    for (const budget of budgets) {
      for (const c of classes) {
        for (let retry = 1; retry <= 60; retry++) {
          const cap = capOf(c, retry, budget);
          for (let i = 0; i < 20; i++) {
            const delay = backoffDelay(c, retry, budget, random);
            const at = `${c} retry ${retry} budget ${JSON.stringify(budget)}: ${delay}`;
            assert.ok(Number.isFinite(delay), withSeed(`finite: ${at}`));
            assert.ok(delay <= cap, withSeed(`at most the cap ${cap}: ${at}`));
            assert.ok(delay <= budget.maxDelayMs, withSeed(`at most maxDelayMs: ${at}`));
            assert.ok(delay >= expected[c].floor * cap, withSeed(`at least the floor: ${at}`));
          }
        }
      }
    }
  });

  test('the cap is min(max, base * 2^(n-1) * scale): extremes of random hit both ends', () => {
    const budget = budgets[0]!;
    for (const c of classes) {
      for (let retry = 1; retry <= 8; retry++) {
        const cap = capOf(c, retry, budget);
        // random() is in [0, 1): 0 gives the floor, just under 1 gives (just under) the cap.
        assert.equal(
          backoffDelay(c, retry, budget, () => 0),
          expected[c].floor * cap,
        );
        const top = backoffDelay(c, retry, budget, () => 1 - 2 ** -40);
        assert.ok(cap - top < cap * 1e-9, `${c} retry ${retry}: ${top} close to ${cap}`);
      }
    }
    // Concrete numbers from the defaults, so a changed shape cannot hide inside capOf.
    assert.equal(
      backoffDelay('connection', 1, budget, () => 0.5),
      500,
    );
    assert.equal(
      backoffDelay('connection', 3, budget, () => 0.5),
      2000,
    );
    assert.equal(
      backoffDelay('connection', 10, budget, () => 0.5),
      15_000,
    ); // capped at 30 s
    assert.equal(
      backoffDelay('unavailable', 1, budget, () => 0),
      500,
    );
    assert.equal(
      backoffDelay('conflict', 1, budget, () => 0.5),
      25,
    );
  });

  test('the cap doubles per retry until it reaches maxDelay, then stays', () => {
    const budget = budgets[0]!;
    const top = (c: RetryClass, n: number) => backoffDelay(c, n, budget, () => 1 - 2 ** -40);
    for (const c of classes) {
      let previous = 0;
      for (let retry = 1; retry <= 40; retry++) {
        const cap = top(c, retry);
        assert.ok(cap >= previous, `${c}: cap does not shrink at retry ${retry}`);
        if (cap < budget.maxDelayMs / 2) assert.ok(Math.abs(top(c, retry + 1) - 2 * cap) < 1e-6);
        previous = cap;
      }
      assert.ok(budget.maxDelayMs - previous < 1e-6, `${c} ends at maxDelay`);
    }
  });

  test("unavailable's and overload's floor is above conflict's and connection's", () => {
    const budget = budgets[0]!;
    for (let retry = 1; retry <= 10; retry++) {
      const floor = (c: RetryClass) => backoffDelay(c, retry, budget, () => 0);
      assert.ok(floor('unavailable') > floor('conflict'), `retry ${retry}`);
      assert.ok(floor('unavailable') > floor('connection'), `retry ${retry}`);
      assert.ok(floor('overload') > floor('conflict'), `retry ${retry}`);
      assert.equal(floor('conflict'), 0);
      // at least half the cap: a returning server is not met by a burst of immediate retries
      assert.ok(floor('unavailable') >= 0.5 * capOf('unavailable', retry, budget));
    }
  });

  test('conflicts start far smaller than connection errors', () => {
    const budget = budgets[0]!;
    const random = seededRandom(testSeed);
    for (let i = 0; i < 200; i++) {
      const delay = backoffDelay('conflict', 1, budget, random);
      assert.ok(delay <= 50, withSeed(`first conflict retry waits at most 50 ms: ${delay}`));
    }
  });

  test('full jitter spreads the delays over the range instead of a constant', () => {
    const budget = budgets[0]!;
    for (const c of classes) {
      const random = seededRandom(testSeed);
      const retry = 4;
      const cap = capOf(c, retry, budget);
      const low = expected[c].floor * cap;
      const samples = Array.from({ length: 2000 }, () => backoffDelay(c, retry, budget, random));
      const distinct = new Set(samples).size;
      assert.ok(distinct > 1900, withSeed(`${c}: ${distinct} distinct delays of 2000`));
      // Each tenth of [low, cap] gets a fair share (uniform: 200 each; allow wide slack).
      const buckets = Array.from({ length: 10 }, () => 0);
      for (const d of samples) buckets[Math.min(9, Math.floor(((d - low) / (cap - low)) * 10))]!++;
      for (const [i, n] of buckets.entries()) {
        assert.ok(n > 120 && n < 280, withSeed(`${c}: bucket ${i} holds ${n} of 2000`));
      }
      const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
      const mid = (low + cap) / 2;
      assert.ok(Math.abs(mean - mid) < 0.05 * cap, withSeed(`${c}: mean ${mean} near ${mid}`));
    }
  });

  test('uses Math.random when no random is given, still within bounds', () => {
    const budget = budgets[1]!;
    for (let i = 0; i < 500; i++) {
      const delay = backoffDelay('connection', 3, budget);
      assert.ok(delay >= 0 && delay <= capOf('connection', 3, budget));
    }
  });
});

describe('seededRandom', () => {
  test('replays: the same seed gives the same sequence, another seed another', () => {
    const a = seededRandom(testSeed);
    const b = seededRandom(testSeed);
    const c = seededRandom(testSeed + 1);
    const first = Array.from({ length: 100 }, () => a());
    assert.deepEqual(
      Array.from({ length: 100 }, () => b()),
      first,
      withSeed('same seed, same sequence'),
    );
    assert.notDeepEqual(
      Array.from({ length: 100 }, () => c()),
      first,
      withSeed('seed + 1 differs'),
    );
  });

  test('stays in [0, 1)', () => {
    const random = seededRandom(testSeed);
    for (let i = 0; i < 100_000; i++) {
      const x = random();
      assert.ok(x >= 0 && x < 1, withSeed(`value ${i}: ${x}`));
    }
  });
});
