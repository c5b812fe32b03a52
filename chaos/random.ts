// Every random choice the chaos harness makes comes from one printed seed, so a failing run
// replays with --seed. The workers' own jitter is theirs and is not replayed.
import { seededRandom } from '../src/db/retry-policy.js';

export interface Random {
  /** A number in [0, 1). */
  next(): number;
  /** A number in [min, max). */
  between(min: number, max: number): number;
  /** A whole number from min to max, both included. */
  int(min: number, max: number): number;
  pick<T>(items: readonly T[]): T;
}

/** A stream for one purpose (e.g. one fault's timing) derived from the run's seed. */
export function random(seed: number, stream = ''): Random {
  const next = seededRandom((seed ^ hash(stream)) >>> 0);
  const between = (min: number, max: number) => min + (max - min) * next();
  const int = (min: number, max: number) => Math.floor(between(min, max + 1));
  return { next, between, int, pick: (items) => items[int(0, items.length - 1)]! };
}

/** FNV-1a: a stable 32-bit number for a string. */
export function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A fresh seed when none was given: printed, so the run can be replayed. */
export function freshSeed(): number {
  return Math.floor(Math.random() * 1_000_000);
}
