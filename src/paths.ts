import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package's own folder, whether running from src/ (tsx) or dist/src/ (compiled). */
export const packageRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('unstuck: cannot find its package.json');
    dir = parent;
  }
  return dir;
})();

export const migrationsDir = join(packageRoot, 'migrations');
