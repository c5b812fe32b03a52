import type { Stats } from 'node:fs';

/**
 * Why a path cannot be processed as a file, in words a user reads in a file's error. Only
 * problems of the file itself get words here; anything else (EMFILE, EIO) is left to be
 * retried as the system fault it is.
 */

const reasons: Record<string, string> = {
  ENOENT: 'file not found',
  ENOTDIR: 'file not found (a folder in its path is not a folder)',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  ELOOP: 'symlink loop',
  EISDIR: 'is a directory',
  ENAMETOOLONG: 'path too long',
};

export function fsErrorReason(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === undefined ? undefined : reasons[code];
}

/** For anything that is not a regular file, what it is instead. */
export function notRegularReason(stats: Stats): string {
  if (stats.isDirectory()) return 'is a directory';
  const kind = stats.isFIFO()
    ? 'a FIFO'
    : stats.isSocket()
      ? 'a socket'
      : stats.isCharacterDevice()
        ? 'a character device'
        : stats.isBlockDevice()
          ? 'a block device'
          : 'a symlink';
  return `not a regular file: it is ${kind}`;
}

export function oversizedReason(size: number, maxSize: number): string {
  return `file is ${size} bytes, over the limit of ${maxSize}`;
}
