import { isAbsolute, relative, sep } from 'node:path';

/**
 * Keeping every file the workflow reads or writes inside its folder. Paths arrive from the
 * database or from a directory listing that may have changed since, so they are checked
 * again each time rather than trusted.
 */

/** Whether `path` is `root` itself or lies below it; both must already be absolute. */
export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!isAbsolute(rel) && rel !== '..' && !rel.startsWith(`..${sep}`));
}

/** Why `relPath` cannot name a file below a folder, or undefined when it can. */
export function relativePathProblem(relPath: string): string | undefined {
  if (relPath === '') return 'the file path is empty';
  if (relPath.includes('\0')) return 'the file path contains a NUL character';
  if (relPath.startsWith('/')) return `path "${relPath}" is absolute, not relative to the folder`;
  if (relPath.split('/').includes('..')) return `path "${relPath}" leads outside the folder`;
  return undefined;
}
