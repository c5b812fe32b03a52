import {
  closeSync,
  constants,
  fstatSync,
  openSync,
  readlinkSync,
  readSync,
  realpathSync,
} from 'node:fs';
import { join } from 'node:path';
import { isInside, relativePathProblem } from './confine.js';
import { fsErrorReason, notRegularReason, oversizedReason } from './fs-reasons.js';

/**
 * Reading a listed file when its turn comes. Time has passed since the listing, so nothing
 * it said is trusted: what was actually opened is checked against the source folder (through
 * any symlink swapped in since), and checked again for being a regular file within the limit.
 *
 * The calls are synchronous on purpose: for the small local files this reads, a thread-pool
 * round trip per call cost over ten times the CPU of the call itself, and that CPU is what
 * caps throughput. Files above SYNC_READ_LIMIT are read in slices, yielding between them.
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
const SYNC_READ_LIMIT = 1024 * 1024;
const realRoots = new Map<string, string>();

export async function readConfinedFile(
  root: string,
  relPath: string,
  maxSize: number,
): Promise<Buffer> {
  const reject = (reason: string) => new FileRejectedError(relPath, reason);
  const problem = relativePathProblem(relPath);
  if (problem) throw reject(problem);
  const fd = openConfined(realRoot(root), relPath, reject);
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw reject(notRegularReason(stats));
    if (stats.size > maxSize) throw reject(oversizedReason(stats.size, maxSize));
    const content = await readAll(fd, stats.size, maxSize);
    // It may have grown since the stat.
    if (content.length > maxSize) throw reject(oversizedReason(content.length, maxSize));
    return content;
  } finally {
    closeSync(fd);
  }
}

function realRoot(root: string): string {
  let real = realRoots.get(root);
  if (real === undefined) realRoots.set(root, (real = realpathSync(root)));
  return real;
}

/** Opens the file without following a final symlink unless it stays inside the root. */
function openConfined(
  root: string,
  relPath: string,
  reject: (reason: string) => FileRejectedError,
): number {
  let fd: number;
  try {
    fd = openSync(join(root, relPath), OPEN_FLAGS);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ELOOP') return rejectKnown(reject)(error);
    // The file is a symlink: follow it only to a real file inside the root.
    const target = tryOr(() => realpathSync(join(root, relPath)), rejectKnown(reject));
    if (!isInside(root, target)) throw reject('symlink leads outside the source folder');
    fd = tryOr(() => openSync(target, OPEN_FLAGS), rejectKnown(reject));
  }
  const opened = openedPath(fd, join(root, relPath));
  if (!isInside(root, opened)) {
    closeSync(fd);
    throw reject('symlink leads outside the source folder');
  }
  return fd;
}

/** Where an open file really is: on Linux the kernel says; elsewhere ask realpath. */
function openedPath(fd: number, path: string): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return realpathSync(path);
  }
}

async function readAll(fd: number, size: number, maxSize: number): Promise<Buffer> {
  // One byte beyond the limit tells a file that grew past it.
  const limit = Math.min(maxSize + 1, Math.max(size + 1, 1));
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(Math.min(SYNC_READ_LIMIT, Math.max(limit - total, 1)));
    const n = readSync(fd, chunk, 0, chunk.length, total);
    if (n === 0) break;
    chunks.push(n === chunk.length ? chunk : chunk.subarray(0, n));
    total += n;
    if (total > maxSize) break;
    if (total >= SYNC_READ_LIMIT) await new Promise((resolve) => setImmediate(resolve));
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total);
}

function tryOr<T>(fn: () => T, onError: (error: unknown) => never): T {
  try {
    return fn();
  } catch (error) {
    return onError(error);
  }
}

/** File problems become rejections; system faults pass through, to be retried. */
function rejectKnown(reject: (reason: string) => FileRejectedError) {
  return (error: unknown): never => {
    const reason = fsErrorReason(error);
    throw reason === undefined ? error : reject(reason);
  };
}
