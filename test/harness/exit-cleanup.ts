// What a test process must undo however it ends: servers and poolers it started (they may run
// detached, so nothing else stops them) and their folders.

const cleanups = new Set<() => void>();
let hooked = false;

/**
 * Runs `cleanup` when the process exits, also when it fails, forgets to clean up or is
 * interrupted: signals skip 'exit', so they are handled too, and the process then dies of the
 * same signal. Returns the way to forget it again (once cleaned up the normal way).
 */
export function cleanUpAtExit(cleanup: () => void): () => void {
  if (!hooked) {
    hooked = true;
    process.on('exit', runCleanups);
    for (const signal of SIGNALS) process.on(signal, onSignal);
  }
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

function runCleanups(): void {
  for (const cleanup of cleanups) {
    try {
      cleanup();
    } catch {
      // Best effort: the process is ending.
    }
  }
  cleanups.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  // Still listening while cleaning up: a second signal (test runners send several) would
  // otherwise kill the process between stopping a server and deleting its folder.
  runCleanups();
  for (const s of SIGNALS) process.off(s, onSignal);
  process.kill(process.pid, signal);
}
