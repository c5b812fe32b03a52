import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { migrationsDir } from '../paths.js';
import type { Database } from './database.js';

export interface Migration {
  version: number;
  name: string;
  file: string;
}

export class SchemaTooNewError extends Error {
  override name = 'SchemaTooNewError';
}

/** Numbered plain-SQL files, `NNN_name.sql`, in version order. */
export async function listMigrations(dir = migrationsDir): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d+_[\w-]+\.sql$/.test(f));
  return files
    .map((file) => ({
      version: Number(file.split('_')[0]),
      name: file.replace(/^\d+_|\.sql$/g, ''),
      file: join(dir, file),
    }))
    .sort((a, b) => a.version - b.version);
}

/**
 * Applies the pending migrations in one transaction. A transaction-level advisory lock makes
 * concurrent migrators wait for each other (and works through PgBouncer's transaction mode);
 * the losers then find nothing left to apply.
 */
export async function migrate(
  db: Database,
  dir = migrationsDir,
): Promise<{ applied: Migration[]; version: number }> {
  const known = await listMigrations(dir);
  const sql = await Promise.all(known.map((m) => readFile(m.file, 'utf8')));
  return db.transaction(
    async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock(hashtext('unstuck.migrate'))");
      await tx.query(`CREATE SCHEMA IF NOT EXISTS unstuck;
        CREATE TABLE IF NOT EXISTS unstuck.schema_migrations (
          version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
      const { rows } = await tx.query<{ version: number }>(
        'SELECT version FROM unstuck.schema_migrations',
      );
      const done = new Set(rows.map((r) => r.version));
      const newest = Math.max(0, ...done);
      const latest = known.at(-1)?.version ?? 0;
      if (newest > latest) {
        throw new SchemaTooNewError(
          `the database schema is at version ${newest}, but this unstuck knows versions up to ${latest}: upgrade unstuck`,
        );
      }
      const applied: Migration[] = [];
      for (const [i, m] of known.entries()) {
        if (done.has(m.version)) continue;
        await tx.query(sql[i]!);
        await tx.query('INSERT INTO unstuck.schema_migrations (version, name) VALUES ($1, $2)', [
          m.version,
          m.name,
        ]);
        applied.push(m);
      }
      return { applied, version: Math.max(newest, latest) };
    },
    { name: 'migrate' },
  );
}
