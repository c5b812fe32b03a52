// Temporary folders for a test file: made fresh under the system's temporary folder, filled with
// files as asked, and removed together when the file's tests are done.
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TempFoldersOptions {
  /** The prefix of a folder's name when `make` is given none. */
  prefix: string;
  /**
   * Open each folder (0755): mkdtemp makes it 0700, but as root the test server runs as user
   * postgres, and a folder it is given (a source, an output) must let it in.
   */
  serverReadable?: boolean;
}

export class TempFolders {
  readonly #made: string[] = [];

  constructor(private readonly options: TempFoldersOptions) {}

  /** A new empty folder, removed by `removeAll`. */
  async make(prefix = this.options.prefix): Promise<string> {
    const folder = await mkdtemp(join(tmpdir(), prefix));
    if (this.options.serverReadable) await chmod(folder, 0o755);
    this.#made.push(folder);
    return folder;
  }

  /** A new folder holding `files` (relative path to content). */
  async withFiles(files: Record<string, string | Buffer>, prefix?: string): Promise<string> {
    const folder = await this.make(prefix);
    await writeFiles(folder, files);
    return folder;
  }

  /** Removes every folder made so far, one after the other. */
  async removeAll(): Promise<void> {
    for (const folder of this.#made) await rm(folder, { recursive: true, force: true });
  }
}

/** Writes `files` (relative path to content) into `folder`, making subfolders as needed. */
export async function writeFiles(
  folder: string,
  files: Record<string, string | Buffer>,
): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(folder, path, '..'), { recursive: true });
    await writeFile(join(folder, path), content);
  }
}
