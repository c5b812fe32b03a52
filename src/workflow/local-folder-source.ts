import type { Dirent, Stats } from 'node:fs';
import { lstat, opendir, realpath, stat } from 'node:fs/promises';
import { isUtf8 } from 'node:buffer';
import picomatch from 'picomatch';
import type { SourceDefinition } from './definition.js';
import { fsErrorReason, notRegularReason, oversizedReason } from './fs-reasons.js';

/**
 * Listing the files of a local folder, in batches, as the engine records them. The walk keeps
 * only the folders still to visit, never the listing, so a folder of millions of files costs
 * no more memory than one batch. Names are read as bytes: a name that is not valid UTF-8
 * cannot be opened through a JavaScript string, and must be reported rather than lost.
 */

export interface FileEntry {
  /** Relative to the source folder, with / between folders. */
  path: string;
  size: number;
  /**
   * Set when the file must be recorded but cannot be processed: the reason it failed. A
   * folder that cannot be read is one such entry, under the folder's own path.
   */
  problem?: string;
}

interface Walk {
  root: Buffer;
  source: SourceDefinition;
  /** Whether a file's path is to be listed: included, and not excluded. */
  selected: (path: string) => boolean;
  excluded: (path: string) => boolean;
}

const SLASH = Buffer.from('/');

export async function* listFiles(
  source: SourceDefinition,
  { batchSize = 500 }: { batchSize?: number } = {},
): AsyncGenerator<FileEntry[]> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`batchSize must be a whole number of at least 1, got ${batchSize}`);
  }
  const included = matcher(source.include, true);
  const excluded = matcher(source.exclude, false);
  const walk: Walk = {
    root: Buffer.from(await realpath(source.path)),
    source,
    selected: (path) => included(path) && !excluded(path),
    excluded,
  };
  let batch: FileEntry[] = [];
  for await (const entry of walkFolder(walk)) {
    batch.push(entry);
    if (batch.length === batchSize) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/**
 * Patterns are matched against the relative path. Dotfiles are files like any other, and the
 * s flag lets "**" match names with a newline, which are legal.
 */
function matcher(globs: string[], whenNone: boolean): (path: string) => boolean {
  return globs.length === 0 ? () => whenNone : picomatch(globs, { dot: true, flags: 's' });
}

async function* walkFolder(walk: Walk): AsyncGenerator<FileEntry> {
  const pending: Buffer[] = [Buffer.alloc(0)];
  for (let folder = pending.pop(); folder; folder = pending.pop()) {
    let entries: AsyncIterable<Dirent<Buffer>>;
    try {
      entries = await openByBytes(join(walk.root, folder));
    } catch (error) {
      const reason = fsErrorReason(error);
      // The root failing is the whole source failing: that is the caller's to handle.
      if (folder.length === 0 || reason === undefined) throw error;
      yield { path: displayPath(folder), size: 0, problem: `folder cannot be read: ${reason}` };
      continue;
    }
    for await (const dirent of entries) {
      const rel = folder.length === 0 ? dirent.name : join(folder, dirent.name);
      const entry = await examine(walk, rel, dirent);
      if (entry === 'folder') {
        // An excluded folder is skipped whole, so "node_modules/**" costs nothing to walk.
        if (walk.source.recursive && !walk.excluded(displayPath(rel))) pending.push(rel);
      } else if (entry) yield entry;
    }
  }
}

/**
 * Node's types only allow string encodings here, but fs.opendir takes 'buffer' too and then
 * names every entry by its bytes.
 */
function openByBytes(folder: Buffer): Promise<AsyncIterable<Dirent<Buffer>>> {
  return opendir(folder, { encoding: 'buffer' as BufferEncoding }) as unknown as Promise<
    AsyncIterable<Dirent<Buffer>>
  >;
}

async function examine(
  walk: Walk,
  rel: Buffer,
  dirent: Dirent<Buffer>,
): Promise<FileEntry | 'folder' | undefined> {
  if (dirent.isDirectory()) return 'folder';
  const abs = join(walk.root, rel);
  const path = displayPath(rel);
  let stats: Stats;
  try {
    // Also tells apart entries whose type the file system did not report with their name.
    stats = await lstat(abs);
  } catch (error) {
    return unexaminable(walk, path, error);
  }
  if (stats.isDirectory()) return 'folder';
  if (!walk.selected(path)) return undefined;
  if (!isUtf8(rel)) return { path, size: stats.size, problem: 'file name is not valid UTF-8' };
  if (stats.isSymbolicLink()) return followLink(walk, abs, path);
  if (!stats.isFile()) return { path, size: 0, problem: notRegularReason(stats) };
  return sized(walk, path, stats.size);
}

/** A file that vanished since its folder was read was never there; others are reported. */
function unexaminable(walk: Walk, path: string, error: unknown): FileEntry | undefined {
  const reason = fsErrorReason(error);
  if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  if (reason === undefined) throw error;
  return walk.selected(path)
    ? { path, size: 0, problem: `cannot be examined: ${reason}` }
    : undefined;
}

/**
 * A symlink to a file inside the source counts as that file. Symlinks to folders are not
 * followed, which is what keeps the walk free of loops; the folder they point to is either
 * walked anyway (inside the source) or not the workflow's to read (outside it).
 */
async function followLink(walk: Walk, abs: Buffer, path: string): Promise<FileEntry | undefined> {
  let target: Stats;
  let real: Buffer;
  try {
    target = await stat(abs);
    real = await realpath(abs, { encoding: 'buffer' });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      return { path, size: 0, problem: 'dangling symlink: its target does not exist' };
    }
    const reason = fsErrorReason(error);
    if (reason === undefined) throw error;
    return { path, size: 0, problem: `symlink cannot be followed: ${reason}` };
  }
  if (target.isDirectory()) return undefined;
  if (!isBelow(walk.root, real)) {
    return { path, size: 0, problem: 'symlink leads outside the source folder' };
  }
  if (!target.isFile()) return { path, size: 0, problem: notRegularReason(target) };
  return sized(walk, path, target.size);
}

function sized(walk: Walk, path: string, size: number): FileEntry {
  const max = walk.source.maxFileSize;
  return size > max ? { path, size, problem: oversizedReason(size, max) } : { path, size };
}

function join(folder: Buffer, name: Buffer): Buffer {
  return Buffer.concat([folder, SLASH, name]);
}

function isBelow(root: Buffer, path: Buffer): boolean {
  const prefix = root.at(-1) === SLASH[0] ? root : join(root, Buffer.alloc(0));
  return path.length > prefix.length && path.subarray(0, prefix.length).equals(prefix);
}

/**
 * The path as text. Bytes that are not UTF-8 are written as \xNN, so two such names stay
 * two different paths instead of both becoming U+FFFD.
 */
function displayPath(rel: Buffer): string {
  if (isUtf8(rel)) return rel.toString('utf8');
  let text = '';
  for (let i = 0; i < rel.length;) {
    const length = [1, 2, 3, 4].find((n) => i + n <= rel.length && isUtf8(rel.subarray(i, i + n)));
    if (length === undefined) {
      text += `\\x${rel[i]?.toString(16).padStart(2, '0')}`;
      i++;
    } else {
      text += rel.subarray(i, i + length).toString('utf8');
      i += length;
    }
  }
  return text;
}
