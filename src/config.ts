import { z } from 'zod';

/**
 * Every setting unstuck reads from the environment, validated once at start-up.
 * A bad value stops start-up with a message naming the variable and the accepted form.
 */

const seconds = (min: number, max: number) => z.coerce.number().finite().min(min).max(max);
const whole = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const flag = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'])
  .transform((v) => ['true', '1', 'yes', 'on'].includes(v));
const postgresUrl = z.string().refine((v) => {
  try {
    return ['postgres:', 'postgresql:'].includes(new URL(v).protocol);
  } catch {
    return false;
  }
});

interface Setting {
  env: string;
  accepted: string;
  schema: z.ZodType;
  fallback?: string;
}

const settings = {
  databaseUrl: {
    env: 'DATABASE_URL',
    accepted: 'a postgres:// or postgresql:// URL',
    schema: postgresUrl,
  },
  retryMaxRetries: {
    env: 'DB_RETRY_MAX_RETRIES',
    accepted: 'a whole number from 0 to 1000',
    schema: whole(0, 1000),
    fallback: '3',
  },
  retryBaseDelay: {
    env: 'DB_RETRY_BASE_DELAY',
    accepted: 'seconds, from 0.001 to 3600',
    schema: seconds(0.001, 3600),
    fallback: '1.0',
  },
  retryMaxDelay: {
    env: 'DB_RETRY_MAX_DELAY',
    accepted: 'seconds, from 0.001 to 3600, not below DB_RETRY_BASE_DELAY',
    schema: seconds(0.001, 3600),
    fallback: '30.0',
  },
  retryBudget: {
    env: 'DB_RETRY_BUDGET',
    accepted: 'seconds, from 0.1 to 86400',
    schema: seconds(0.1, 86400),
    fallback: '60',
  },
  poolSize: {
    env: 'DB_POOL_SIZE',
    accepted: 'a whole number from 1 to 1000',
    schema: whole(1, 1000),
    fallback: '10',
  },
  connectTimeout: {
    env: 'DB_CONNECT_TIMEOUT',
    accepted: 'seconds, from 0.1 to 600',
    schema: seconds(0.1, 600),
    fallback: '5',
  },
  statementTimeout: {
    env: 'DB_STATEMENT_TIMEOUT',
    accepted: 'seconds, from 0 (off) to 86400',
    schema: seconds(0, 86400),
    fallback: '30',
  },
  queryTimeout: {
    env: 'DB_QUERY_TIMEOUT',
    accepted: 'seconds, from 0 (off) to 86400',
    schema: seconds(0, 86400),
    fallback: '60',
  },
  idleTimeout: {
    env: 'DB_IDLE_TIMEOUT',
    accepted: 'seconds, from 0 (never) to 86400',
    schema: seconds(0, 86400),
    fallback: '30',
  },
  pgbouncer: { env: 'DB_PGBOUNCER', accepted: 'true or false', schema: flag, fallback: 'false' },
  echo: { env: 'DB_ECHO', accepted: 'true or false', schema: flag, fallback: 'false' },
  logLevel: {
    env: 'LOG_LEVEL',
    accepted: 'one of fatal, error, warn, info, debug, trace, silent',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    fallback: 'info',
  },
  // Read by src/log.ts as the process starts (the logger exists before the configuration);
  // listed here so that a bad value is reported like any other.
  logFormat: {
    env: 'LOG_FORMAT',
    accepted: 'auto (readable on a terminal, JSON otherwise) or json',
    schema: z.enum(['auto', 'json']),
    fallback: 'auto',
  },
  dataDir: {
    env: 'UNSTUCK_DATA_DIR',
    accepted: 'a folder path',
    schema: z.string().min(1),
    fallback: '.unstuck',
  },
  embeddedPort: {
    env: 'UNSTUCK_PG_PORT',
    accepted: 'a TCP port from 1024 to 65535',
    schema: whole(1024, 65535),
    fallback: '54329',
  },
} satisfies Record<string, Setting>;

type Settings = typeof settings;
export type Config = {
  [K in keyof Settings]: K extends 'databaseUrl'
    ? string | undefined
    : Settings[K]['schema'] extends z.ZodType<infer T>
      ? T
      : never;
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(settings) as [string, Setting][]) {
    const raw = env[s.env]?.trim() || s.fallback;
    if (raw === undefined) continue;
    const parsed = s.schema.safeParse(raw);
    if (parsed.success) out[key] = parsed.data;
    else
      problems.push(
        `${s.env}=${JSON.stringify(redactUrl(raw))} is invalid: expected ${s.accepted}`,
      );
  }
  const config = out as Config;
  if (problems.length === 0 && config.retryMaxDelay < config.retryBaseDelay) {
    problems.push(
      `DB_RETRY_MAX_DELAY=${config.retryMaxDelay} is invalid: expected ${settings.retryMaxDelay.accepted} (${config.retryBaseDelay})`,
    );
  }
  if (problems.length > 0)
    throw new ConfigError(`invalid configuration:\n  ${problems.join('\n  ')}`);
  return config;
}

/** The configuration as it may be logged: the database password replaced. */
export function redactedConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    databaseUrl: config.databaseUrl ? redactUrl(config.databaseUrl) : '(embedded)',
  };
}

export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '*****';
    // node-postgres also takes the password as a query parameter.
    if (u.searchParams.has('password')) u.searchParams.set('password', '*****');
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:/@]*):[^@]*@/, '//$1:*****@');
  }
}

/** The list of variables, for --help and the README. */
export const configReference: { env: string; accepted: string; fallback?: string }[] =
  Object.values(settings as Record<string, Setting>).map(({ env, accepted, fallback }) => ({
    env,
    accepted,
    fallback,
  }));
