import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

// JSON lines for machines; on a terminal, the same records made readable. Logs go to stderr
// so that a command's stdout stays clean for its own output (summaries, --json).
const human = process.stderr.isTTY && process.env.LOG_FORMAT !== 'json';
// Until the configuration is validated (which reports a bad LOG_LEVEL), only a known level is
// taken from the environment: pino throws on any other, before a clear message can be given.
const envLevel = process.env.LOG_LEVEL?.trim();
const startLevel =
  envLevel && (envLevel === 'silent' || Object.hasOwn(pino.levels.values, envLevel))
    ? envLevel
    : 'info';

/** The process-wide structured logger. */
export const log: Logger = pino(
  {
    name: 'unstuck',
    level: startLevel,
    base: { pid: process.pid },
    redact: { paths: ['password', '*.password', 'apiKey', '*.apiKey'], censor: '[redacted]' },
  },
  human
    ? pretty({
        destination: 2,
        sync: true,
        ignore: 'pid,hostname,name',
        translateTime: 'SYS:HH:MM:ss.l',
      })
    : pino.destination({ fd: 2, sync: false }),
);

export function setLogLevel(level: string): void {
  log.level = level;
}
