import type { Logger } from '../log.js';
import { dbMetrics } from '../metrics.js';

/**
 * One probe per process watches for the server to come back while operations wait out their
 * backoff, so that after a long outage they resume within one probe interval instead of
 * sleeping out delays that have grown to many seconds, and without each caller hammering
 * the server on its own.
 */
export class ServerProbe {
  private waiters = new Set<() => void>();
  private running = false;

  constructor(
    private readonly check: () => Promise<void>,
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly random: () => number = Math.random,
  ) {}

  /** Waits `ms`, or less if the probe sees the server answer first. */
  pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.waiters.add(wake);
      if (!this.running) void this.watch();
    });
  }

  private async watch(): Promise<void> {
    this.running = true;
    try {
      while (this.waiters.size > 0) {
        if (await this.answers()) {
          // Spread over one interval, with jitter: all at once would pile onto a server that
          // has just come back, which the backoff's jitter exists to avoid.
          const woken = [...this.waiters];
          woken.forEach((wake) => setTimeout(wake, this.random() * this.intervalMs));
          dbMetrics.probeWakeUps.inc();
          this.log.info(
            { woken: woken.length },
            'database answers again; waking waiting operations',
          );
          return;
        }
        await new Promise((r) => setTimeout(r, this.intervalMs));
      }
    } finally {
      this.running = false;
    }
  }

  private async answers(): Promise<boolean> {
    try {
      await this.check();
      return true;
    } catch {
      return false;
    }
  }
}
