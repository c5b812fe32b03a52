import cliProgress from 'cli-progress';
import type { ExecutionSummary } from '../engine/executions.js';

/**
 * Shows an execution moving: a bar on a terminal, a plain line every few seconds otherwise
 * (CI logs, pipes). Both on stderr, so stdout keeps only the summary.
 */
export function progressDisplay(): { update(s: ExecutionSummary): void; done(): void } {
  const started = Date.now();
  const rate = (s: ExecutionSummary) =>
    ((s.completed + s.failed + s.stopped) / Math.max(0.001, (Date.now() - started) / 1000)).toFixed(
      0,
    );
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: ' {bar} {value}/{total} done | {failed} failed | {rate} files/s',
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    let begun = false;
    return {
      update(s) {
        const payload = { failed: s.failed, rate: rate(s) };
        const value = s.completed + s.failed + s.stopped;
        if (!begun) bar.start(s.total, value, payload);
        begun = true;
        bar.setTotal(s.total);
        bar.update(value, payload);
      },
      done: () => bar.stop(),
    };
  }
  let last = 0;
  return {
    update(s) {
      if (Date.now() - last < 2000) return;
      last = Date.now();
      const value = s.completed + s.failed + s.stopped;
      process.stderr.write(
        `progress: ${value}/${s.total} done, ${s.failed} failed, ${rate(s)} files/s\n`,
      );
    },
    done: () => undefined,
  };
}
