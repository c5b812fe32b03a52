// The chaos workload's step: a few milliseconds of work per file, the same for a file in every
// replay of a seed. Each call is logged, so a run can count how often a file's step really ran.
// Files named flaky-* fail their first attempt (a retryable failure); binary-* files are not
// text, which the engine must fail at once (a permanent failure, never retried).
import { appendFileSync } from 'node:fs';
import process from 'node:process';
import { setTimeout as sleep } from 'node:timers/promises';

function hash(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export default async function work(file, { options, attempt, signal }) {
  appendFileSync(options.log, `${file.path} ${attempt} ${process.pid}\n`);
  const { seed, minMs, maxMs } = options;
  const ms = minMs + (hash(`${seed}:${file.path}`) % (maxMs - minMs + 1));
  await sleep(ms, undefined, { signal });
  if (file.path.startsWith('flaky-') && attempt === 1) {
    throw new Error(`flaky file fails its first attempt (${file.path})`);
  }
  const text = file.text(); // throws "binary file, not text" for binary-* files
  return { path: file.path, attempt, ms, chars: text.length, pid: process.pid };
}
