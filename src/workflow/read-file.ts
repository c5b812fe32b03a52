import { constants } from 'node:fs';
import { open, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { isInside, relativePathProblem } from './confine.js';
import { fsErrorReason, notRegularReason, oversizedReason } from './fs-reasons.js';

/**
 * Reading a listed file when its turn comes. Time has passed since the listing, so nothing
 * it said is trusted: the path is checked against the source folder again, through symlinks,
 * and the file is checked again for being a regular file within the size limit.
 */

/** The file itself is the problem; reading it again will not help. */
export class FileRejectedError extends Error {
  override name = 'FileRejectedError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

// No following a symlink swapped in after the check; no blocking on a FIFO swapped in.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

export async function readConfinedFile(
  root: string,
  relPath: string,
  maxSize: number,
): Promise<Buffer> {
  const reject = (reason: string) => new FileRejectedError(relPath, reason);
  const problem = relativePathProblem(relPath);
  if (problem) throw reject(problem);
  const realRoot = await realpath(root);
  const real = await realpath(join(realRoot, relPath)).catch(rejectKnown(reject));
  if (!isInside(realRoot, real)) throw reject('symlink leads outside the source folder');
  const handle = await open(real, OPEN_FLAGS).catch((error: unknown) => {
    const swapped = (error as NodeJS.ErrnoException).code === 'ELOOP';
    if (swapped) throw reject('file was replaced by a symlink while being opened');
    return rejectKnown(reject)(error);
  });
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw reject(notRegularReason(stats));
    if (stats.size > maxSize) throw reject(oversizedReason(stats.size, maxSize));
    const content = await handle.readFile();
    // It may have grown since the stat.
    if (content.length > maxSize) throw reject(oversizedReason(content.length, maxSize));
    return content;
  } finally {
    await handle.close();
  }
}

/** File problems become rejections; system faults pass through, to be retried. */
function rejectKnown(reject: (reason: string) => FileRejectedError) {
  return (error: unknown): never => {
    const reason = fsErrorReason(error);
    throw reason === undefined ? error : reject(reason);
  };
}
