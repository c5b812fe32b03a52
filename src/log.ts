import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The process-wide structured logger. It writes JSON lines to stderr so that a command's
 * stdout stays clean for its own output (summaries, --json).
 */
export const log: Logger = pino(
  {
    name: 'unstuck',
    level: process.env.LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    redact: { paths: ['password', '*.password', 'apiKey', '*.apiKey'], censor: '[redacted]' },
  },
  pino.destination({ fd: 2, sync: false }),
);

export function setLogLevel(level: string): void {
  log.level = level;
}
