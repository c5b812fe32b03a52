// Bounded waiting. Conditions are polled with the test harness's waitFor; a fault's own duration
// ("down for 10 s") is the one place a plain timed pause is right.
export { waitFor } from '../test/harness/db.js';

/** A timed pause that is part of a fault (its duration or cadence), never a stand-in for a condition. */
export function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The promise's outcome, or an error naming `what` once `ms` have passed. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not finish within ${Math.round(ms / 1000)} s`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
