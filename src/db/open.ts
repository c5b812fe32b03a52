import { redactedConfig, type Config } from '../config.js';
import { log, setLogLevel } from '../log.js';
import { Database, databaseOptions } from './database.js';
import { startEmbeddedDefault, type EmbeddedDefault } from './embedded-default.js';

export interface OpenDatabase {
  db: Database;
  /** Set when no DATABASE_URL was given and the embedded default serves instead. */
  embedded?: EmbeddedDefault;
  close(): Promise<void>;
}

/**
 * The database the configuration names, or the embedded default when it names none. Every
 * process that opens one logs the configuration it runs with, once, password redacted.
 */
export async function openDatabase(config: Config): Promise<OpenDatabase> {
  setLogLevel(config.logLevel);
  log.info({ config: redactedConfig(config) }, 'effective configuration');
  const embedded = config.databaseUrl ? undefined : await startEmbeddedDefault(config);
  const db = new Database(databaseOptions(config, config.databaseUrl ?? embedded!.url));
  return {
    db,
    embedded,
    close: async () => {
      await db.close();
      await embedded?.stop();
    },
  };
}
