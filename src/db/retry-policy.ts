import type { ErrorClass } from './errors.js';

export interface RetryBudget {
  /** Retries after the first attempt. */
  maxRetries: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Wall-clock limit for the whole operation, attempts and pauses included. */
  budgetMs: number;
}

// A conflict clears as soon as the other transaction ends, so it starts small; an unavailable or
// overloaded server gets a floor so that retries do not pile onto it the moment it returns.
const shapes: Record<Exclude<ErrorClass, 'permanent'>, { scale: number; floor: number }> = {
  conflict: { scale: 0.05, floor: 0 },
  connection: { scale: 1, floor: 0 },
  unavailable: { scale: 1, floor: 0.5 },
  overload: { scale: 1, floor: 0.5 },
};

/**
 * The pause before retry number `retry` (1 for the first retry): exponential backoff with
 * full jitter, capped at maxDelayMs, never below the class's floor share of the cap.
 */
export function backoffDelay(
  errorClass: Exclude<ErrorClass, 'permanent'>,
  retry: number,
  budget: RetryBudget,
  random: () => number = Math.random,
): number {
  const { scale, floor } = shapes[errorClass];
  const cap = Math.min(budget.maxDelayMs, budget.baseDelayMs * scale * 2 ** (retry - 1));
  return cap * (floor + (1 - floor) * random());
}

/** A small seeded generator (mulberry32), so tests and chaos runs can replay their randomness. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
