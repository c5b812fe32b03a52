import { randomUUID } from 'node:crypto';
import { lstat, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { relativePathProblem } from './confine.js';

/**
 * Writing each file's result as `<folder>/<path>.json`. A reader never sees half a result: it
 * is written to a temporary file beside its final name, flushed, then renamed over it, so a
 * retry simply replaces what an earlier attempt wrote.
 */

export async function writeResultFile(
  folder: string,
  relPath: string,
  result: unknown,
): Promise<void> {
  const problem = relativePathProblem(relPath);
  if (problem) throw new Error(`cannot write the result of "${relPath}": ${problem}`);
  const json = JSON.stringify(result, null, 2);
  if (json === undefined) throw new Error(`the result of "${relPath}" is not JSON`);
  const dir = await confinedFolder(folder, relPath.split('/').slice(0, -1));
  const target = join(dir, `${basename(relPath)}.json`);
  const temp = join(dir, `.${basename(target)}.${randomUUID()}.tmp`);
  try {
    await writeDurably(temp, `${json}\n`);
    await rename(temp, target);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  await syncFolder(dir);
}

/**
 * Creates the subfolders one by one, refusing any that is a symlink: mkdir would follow one
 * and write wherever it pointed, outside the output folder.
 */
async function confinedFolder(folder: string, subfolders: string[]): Promise<string> {
  await mkdir(folder, { recursive: true });
  let dir = folder;
  for (const name of subfolders) {
    dir = join(dir, name);
    await mkdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    if (!(await lstat(dir)).isDirectory()) {
      throw new Error(`cannot write results into "${dir}": it is not a folder (or is a symlink)`);
    }
  }
  return dir;
}

async function writeDurably(file: string, text: string): Promise<void> {
  const handle = await open(file, 'wx');
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The rename is only durable once the folder holding it is flushed too. */
async function syncFolder(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
