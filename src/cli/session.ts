import { InvalidArgumentError } from 'commander';
import { Unstuck } from '../unstuck.js';

/** Opens unstuck for one command and always closes it, stopping an embedded server it started. */
export async function withUnstuck(fn: (u: Unstuck) => Promise<void>): Promise<void> {
  const u = await Unstuck.open();
  try {
    await fn(u);
  } finally {
    await u.close();
  }
}

/**
 * Runs `fn` on the first SIGINT or SIGTERM, so a command can finish cleanly (hand files
 * back, stop the embedded server); a second signal exits at once.
 */
export function onShutdown(fn: () => void): void {
  let signalled = false;
  const handler = (signal: NodeJS.Signals) => {
    if (signalled) process.exit(130);
    signalled = true;
    process.stderr.write(`${signal}: finishing running files and shutting down (again to force)\n`);
    fn();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1024) {
    throw new InvalidArgumentError(`expected a whole number from 1 to 1024, got "${value}"`);
  }
  return n;
}
