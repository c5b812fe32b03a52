import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, configReference, loadConfig, redactedConfig } from '../../src/config.js';
import { databaseOptions } from '../../src/db/database.js';

/** Loads `env` expecting a ConfigError; returns its message. */
function rejects(env: Record<string, string>): string {
  let caught: unknown;
  try {
    loadConfig(env);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError for ${JSON.stringify(env)}`);
  return caught.message;
}

const accepted = (env: string) => {
  const entry = configReference.find((c) => c.env === env);
  assert.ok(entry, `${env} is in configReference`);
  return entry.accepted;
};

// Each variable with values that must stop start-up. UNSTUCK_DATA_DIR is absent: any non-empty
// path is accepted, and an empty or blank value means "use the default".
const bad: Record<string, { value: string; why: string }[]> = {
  DATABASE_URL: [
    { value: 'not a url', why: 'malformed URL' },
    { value: 'postgres//localhost/db', why: 'malformed URL (no colon)' },
    { value: 'mysql://u@localhost/db', why: 'wrong protocol' },
    { value: 'http://localhost:5432/db', why: 'wrong protocol' },
  ],
  DB_RETRY_MAX_RETRIES: [
    { value: 'three', why: 'not a number' },
    { value: '-1', why: 'negative' },
    { value: '2.5', why: 'not whole' },
    { value: '1001', why: 'above the maximum' },
  ],
  DB_RETRY_BASE_DELAY: [
    { value: 'abc', why: 'not a number' },
    { value: '-1', why: 'negative' },
    { value: '0', why: 'below the minimum' },
    { value: 'Infinity', why: 'not finite' },
  ],
  DB_RETRY_MAX_DELAY: [
    { value: '30s', why: 'not a number' },
    { value: '-5', why: 'negative' },
    { value: '3601', why: 'above the maximum' },
  ],
  DB_RETRY_BUDGET: [
    { value: 'long', why: 'not a number' },
    { value: '-60', why: 'negative' },
    { value: '0.05', why: 'below the minimum' },
  ],
  DB_POOL_SIZE: [
    { value: 'ten', why: 'not a number' },
    { value: '-1', why: 'negative' },
    { value: '0', why: 'zero' },
    { value: '1.5', why: 'not whole' },
  ],
  DB_CONNECT_TIMEOUT: [
    { value: 'x', why: 'not a number' },
    { value: '-1', why: 'negative' },
    { value: '0', why: 'below the minimum' },
  ],
  DB_STATEMENT_TIMEOUT: [
    { value: 'x', why: 'not a number' },
    { value: '-1', why: 'negative' },
  ],
  DB_QUERY_TIMEOUT: [
    { value: 'x', why: 'not a number' },
    { value: '-1', why: 'negative' },
  ],
  DB_IDLE_TIMEOUT: [
    { value: 'x', why: 'not a number' },
    { value: '-1', why: 'negative' },
  ],
  DB_PGBOUNCER: [
    { value: 'maybe', why: 'bad boolean' },
    { value: '2', why: 'bad boolean' },
    { value: 'TRUE', why: 'bad boolean (case matters)' },
  ],
  DB_ECHO: [
    { value: 'sometimes', why: 'bad boolean' },
    { value: 'y', why: 'bad boolean' },
  ],
  LOG_LEVEL: [
    { value: 'verbose', why: 'unknown level' },
    { value: 'INFO', why: 'unknown level (case matters)' },
  ],
  LOG_FORMAT: [
    { value: 'pretty', why: 'unknown format' },
    { value: 'JSON', why: 'unknown format (case matters)' },
  ],
  UNSTUCK_PG_PORT: [
    { value: 'port', why: 'not a number' },
    { value: '-5432', why: 'negative' },
    { value: '80', why: 'privileged port' },
    { value: '65536', why: 'above the maximum' },
  ],
};

describe('loadConfig rejects bad values, naming the variable and the accepted form', () => {
  for (const [env, cases] of Object.entries(bad)) {
    for (const { value, why } of cases) {
      test(`${env}=${JSON.stringify(value)} (${why})`, () => {
        const message = rejects({ [env]: value });
        assert.match(message, new RegExp(`\\b${env}=`), 'names the variable');
        assert.ok(
          message.includes(`expected ${accepted(env)}`),
          `names the accepted form "${accepted(env)}": ${message}`,
        );
        assert.ok(message.includes(JSON.stringify(value)), `quotes the bad value: ${message}`);
      });
    }
  }

  test('every variable but UNSTUCK_DATA_DIR has bad-value cases here', () => {
    const untested = configReference
      .map((c) => c.env)
      .filter((env) => !(env in bad) && env !== 'UNSTUCK_DATA_DIR');
    assert.deepEqual(untested, []);
  });

  test('a base delay above the max delay is rejected, naming both', () => {
    const message = rejects({ DB_RETRY_BASE_DELAY: '10', DB_RETRY_MAX_DELAY: '5' });
    assert.match(message, /DB_RETRY_MAX_DELAY=5 is invalid/);
    assert.match(message, /not below DB_RETRY_BASE_DELAY \(10\)/);
  });

  test('a base delay above the default max delay is rejected too', () => {
    const message = rejects({ DB_RETRY_BASE_DELAY: '31' });
    assert.match(message, /DB_RETRY_MAX_DELAY=30 is invalid/);
  });

  test('base equal to max is accepted', () => {
    const config = loadConfig({ DB_RETRY_BASE_DELAY: '5', DB_RETRY_MAX_DELAY: '5' });
    assert.equal(config.retryBaseDelay, 5);
    assert.equal(config.retryMaxDelay, 5);
  });

  test('every bad variable is reported at once, one line each', () => {
    const message = rejects({ DB_POOL_SIZE: 'x', LOG_LEVEL: 'loud', DB_ECHO: 'perhaps' });
    for (const env of ['DB_POOL_SIZE', 'LOG_LEVEL', 'DB_ECHO'])
      assert.match(message, new RegExp(env));
    assert.equal(message.split('\n').length, 4, message);
  });

  test('the bad value of DATABASE_URL is quoted without its password', () => {
    for (const url of ['mysql://app:s3cr3t-pw@db/x', 'postgres://app:s3cr3t-pw@']) {
      const message = rejects({ DATABASE_URL: url });
      assert.ok(!message.includes('s3cr3t-pw'), message);
      assert.match(message, /DATABASE_URL=/);
    }
  });
});

describe('loadConfig defaults and accepted forms', () => {
  test('defaults match the seed: 3 retries, 1.0 s base, 30.0 s max', () => {
    const config = loadConfig({});
    assert.equal(config.retryMaxRetries, 3);
    assert.equal(config.retryBaseDelay, 1.0);
    assert.equal(config.retryMaxDelay, 30.0);
    assert.equal(config.databaseUrl, undefined);
    assert.equal(config.pgbouncer, false);
    assert.equal(config.echo, false);
    assert.equal(config.logLevel, 'info');
  });

  test('blank values fall back to the default', () => {
    const config = loadConfig({ DB_RETRY_MAX_RETRIES: '', DB_RETRY_BASE_DELAY: '   ' });
    assert.equal(config.retryMaxRetries, 3);
    assert.equal(config.retryBaseDelay, 1.0);
  });

  test('every boolean spelling is understood', () => {
    for (const yes of ['true', '1', 'yes', 'on'])
      assert.equal(loadConfig({ DB_PGBOUNCER: yes }).pgbouncer, true);
    for (const no of ['false', '0', 'no', 'off'])
      assert.equal(loadConfig({ DB_ECHO: no }).echo, false);
  });

  test('both URL protocols are accepted; values are trimmed', () => {
    assert.equal(loadConfig({ DATABASE_URL: 'postgres://h/db' }).databaseUrl, 'postgres://h/db');
    assert.equal(
      loadConfig({ DATABASE_URL: ' postgresql://h/db ' }).databaseUrl,
      'postgresql://h/db',
    );
  });

  test('databaseOptions turns seconds into milliseconds', () => {
    const config = loadConfig({
      DB_RETRY_BASE_DELAY: '0.25',
      DB_RETRY_MAX_DELAY: '2',
      DB_RETRY_BUDGET: '7',
      DB_CONNECT_TIMEOUT: '1.5',
      DB_STATEMENT_TIMEOUT: '3',
      DB_PGBOUNCER: 'yes',
    });
    const options = databaseOptions(config, 'postgres://h/db');
    assert.deepEqual(options.retry, {
      maxRetries: 3,
      baseDelayMs: 250,
      maxDelayMs: 2000,
      budgetMs: 7000,
    });
    assert.equal(options.connectTimeoutMs, 1500);
    assert.equal(options.statementTimeoutMs, 3000);
    assert.equal(options.pgbouncer, true);
  });
});

describe('redactedConfig', () => {
  const secret = 'pa55-Very-Secret';

  test('never contains the password in the user-info part', () => {
    for (const url of [
      `postgres://app:${secret}@db.example:5432/unstuck`,
      `postgresql://app:${encodeURIComponent(secret + '@/:')}@db/unstuck?sslmode=require`,
    ]) {
      const redacted = redactedConfig(loadConfig({ DATABASE_URL: url }));
      const text = JSON.stringify(redacted);
      assert.ok(!text.includes(secret), text);
      assert.match(String(redacted.databaseUrl), /app:\*{5}@db/);
    }
  });

  test('keeps everything else and marks the embedded server', () => {
    const redacted = redactedConfig(loadConfig({ DB_POOL_SIZE: '4' }));
    assert.equal(redacted.databaseUrl, '(embedded)');
    assert.equal(redacted.poolSize, 4);
  });

  // node-postgres reads `?password=` from a connection string (pg-connection-string copies
  // every query parameter into the config), so such a URL connects, and its password is logged.
  test('never contains a password given as a query parameter', () => {
    const redacted = redactedConfig(
      loadConfig({ DATABASE_URL: `postgres://app@db/unstuck?password=${secret}` }),
    );
    assert.ok(!JSON.stringify(redacted).includes(secret), JSON.stringify(redacted));
  });
});
