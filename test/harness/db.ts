// Small helpers for tests of the database layer: a Database with test-friendly retry settings
// and a replayable seed, one bounded way to wait for a condition, and counter deltas.
import type { Counter } from 'prom-client';
import { pino } from 'pino';
import { Database, type DatabaseOptions } from '../../src/db/database.js';
import { seededRandom, type RetryBudget } from '../../src/db/retry-policy.js';
import { counterValue } from '../../src/metrics.js';

/**
 * The seed for every random choice the layer makes in this test process. Set TEST_SEED to
 * replay a failed run; it is printed whenever the process ends with a failure.
 */
export const testSeed: number = process.env.TEST_SEED
  ? Number(process.env.TEST_SEED)
  : Math.floor(Math.random() * 2 ** 31);

process.once('exit', (code) => {
  if (code !== 0 || process.exitCode) {
    process.stderr.write(`\n[test seed] TEST_SEED=${testSeed} replays this run's jitter\n`);
  }
});

/** Appends the seed to an assertion message, so a failure names what replays it. */
export const withSeed = (message: string): string => `${message} (TEST_SEED=${testSeed})`;

/** Silent unless TEST_LOG_LEVEL is set: retries log warnings by design, and tests cause many. */
export const testLog = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

export type TestOverrides = Partial<Omit<DatabaseOptions, 'retry'>> & {
  retry?: Partial<RetryBudget>;
};

/** Test-friendly options: fast backoff (20 ms base, 500 ms cap), short timeouts, seeded jitter. */
export function testConfig(url: string, overrides: TestOverrides = {}): DatabaseOptions {
  const { retry, ...rest } = overrides;
  return {
    url,
    poolSize: 8,
    connectTimeoutMs: 2_000,
    statementTimeoutMs: 0,
    queryTimeoutMs: 0,
    idleTimeoutMs: 10_000,
    pgbouncer: false,
    echo: false,
    probeIntervalMs: 100,
    random: seededRandom(testSeed),
    log: testLog,
    ...rest,
    retry: { maxRetries: 50, baseDelayMs: 20, maxDelayMs: 500, budgetMs: 30_000, ...retry },
  };
}

/** A Database on `url` built from testConfig(url, overrides). */
export function testDatabase(url: string, overrides: TestOverrides = {}): Database {
  return new Database(testConfig(url, overrides));
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** What was awaited, for the error when it never happened. */
  message?: string;
}

/**
 * Polls `condition` until it returns something truthy (which is returned) or the time is up.
 * A condition that throws counts as "not yet"; the last error is reported on timeout.
 * This is the only waiting helper: never sleep in place of a condition.
 */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  { timeoutMs = 10_000, intervalMs = 50, message = 'condition' }: WaitOptions = {},
): Promise<NonNullable<T>> {
  const started = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() - started >= timeoutMs) {
      const why = lastError instanceof Error ? `; last error: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}${why}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Starts counting: `delta()` is how much the counter (optionally one label set) grew since. */
export async function countFrom(
  counter: Counter<string>,
  labels?: Record<string, string>,
): Promise<{ delta(): Promise<number> }> {
  const before = await counterValue(counter, labels);
  return { delta: async () => (await counterValue(counter, labels)) - before };
}

/** Time an async call: its result and how long it took in milliseconds. */
export async function timed<T>(
  fn: () => Promise<T>,
): Promise<{ ms: number } & ({ value: T; error?: undefined } | { error: unknown })> {
  const started = performance.now();
  try {
    const value = await fn();
    return { ms: performance.now() - started, value };
  } catch (error) {
    return { ms: performance.now() - started, error };
  }
}
