import type { Command } from 'commander';
import { loadConfig, redactUrl } from '../config.js';
import { embeddedServerFor, startEmbeddedDefault } from '../db/embedded-default.js';
import { migrate } from '../db/migrate.js';
import { openDatabase } from '../db/open.js';
import { print } from './print.js';

export function dbCommands(program: Command): void {
  program
    .command('migrate')
    .description('apply pending schema migrations (also done by every command on start)')
    .option('--json', 'print JSON for scripts')
    .action(async (flags: { json?: boolean }) => {
      const { db, close } = await openDatabase(loadConfig());
      try {
        const { applied, version } = await migrate(db);
        print(!!flags.json, { applied: applied.map((m) => m.version), version }, () =>
          applied.length === 0
            ? `schema is up to date at version ${version}`
            : `applied ${applied.map((m) => `${m.version} ${m.name}`).join(', ')}; schema at version ${version}`,
        );
      } finally {
        await close();
      }
    });

  const db = program
    .command('db')
    .description('the embedded PostgreSQL server (used when DATABASE_URL is unset)');
  db.command('start')
    .description('start the embedded server and leave it running for later commands')
    .action(async () => {
      const config = loadConfig();
      if (config.databaseUrl)
        return void console.log(
          `DATABASE_URL is set (${redactUrl(config.databaseUrl)}): nothing to start`,
        );
      const server = await startEmbeddedDefault(config, { keepRunning: true });
      console.log(
        `embedded PostgreSQL ${server.startedHere ? 'started' : 'already running'} on 127.0.0.1:${server.port}, data in ${server.dataDir}`,
      );
    });
  db.command('stop')
    .description('stop the embedded server')
    .action(async () => {
      const config = loadConfig();
      if (config.databaseUrl)
        return void console.log('DATABASE_URL is set: unstuck does not stop your server');
      const stopped = await embeddedServerFor(config).stop('fast');
      console.log(stopped ? 'embedded PostgreSQL stopped' : 'embedded PostgreSQL was not running');
    });
  db.command('status')
    .description('is the database up? (the embedded server, or the one DATABASE_URL names)')
    .option('--json', 'print JSON for scripts')
    .action(async (flags: { json?: boolean }) => {
      const config = loadConfig();
      if (config.databaseUrl) {
        const { db, close } = await openDatabase(config);
        try {
          const { rows } = await db.query<{ version: string }>('SELECT version()', [], {
            name: 'db status',
            idempotent: true,
          });
          print(
            !!flags.json,
            { running: true, url: redactUrl(config.databaseUrl), version: rows[0]!.version },
            () => `database at ${redactUrl(config.databaseUrl!)} is up: ${rows[0]!.version}`,
          );
        } finally {
          await close();
        }
        return;
      }
      const server = embeddedServerFor(config);
      const status = await server.status();
      print(!!flags.json, { ...status, dataDir: server.dataDir }, () =>
        status.running
          ? `embedded PostgreSQL running (pid ${status.pid}) on 127.0.0.1:${status.port}, data in ${server.dataDir}`
          : `embedded PostgreSQL not running; data in ${server.dataDir}`,
      );
    });
}
