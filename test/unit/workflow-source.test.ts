import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { SourceDefinition } from '../../src/workflow/definition.js';
import { listFiles, type FileEntry } from '../../src/workflow/local-folder-source.js';
import { writeResultFile } from '../../src/workflow/output-folder.js';
import { FileRejectedError, readConfinedFile } from '../../src/workflow/read-file.js';
import { TempFolders, writeFiles } from '../harness/temp-folders.js';

const temp = new TempFolders({ prefix: 'unstuck-source-' });
let base: string;
before(async () => {
  base = await temp.make();
});
after(() => temp.removeAll());

let folders = 0;
/** A fresh folder holding `files` (path → content); folders are made as needed. */
async function folderWith(files: Record<string, string> = {}): Promise<string> {
  const root = join(base, `f${folders++}`);
  await mkdir(root);
  await writeFiles(root, files);
  return root;
}

function source(path: string, change: Partial<SourceDefinition> = {}): SourceDefinition {
  const all = { include: ['**'], exclude: [], recursive: true, maxFileSize: 1024 };
  return { type: 'local', path, ...all, ...change };
}

async function batches(src: SourceDefinition, batchSize?: number): Promise<FileEntry[][]> {
  const found: FileEntry[][] = [];
  for await (const batch of listFiles(src, { batchSize })) found.push(batch);
  return found;
}

async function entries(src: SourceDefinition): Promise<FileEntry[]> {
  return (await batches(src)).flat().sort((a, b) => a.path.localeCompare(b.path));
}

const paths = async (src: SourceDefinition) => (await entries(src)).map((e) => e.path);

describe('listFiles', () => {
  const tree = {
    'README.md': '# hi',
    'notes.txt': 'notes',
    '.hidden.txt': 'dot',
    'docs/guide.md': 'guide',
    'docs/deep/er.txt': 'deeper',
    'node_modules/pkg/index.js': 'x',
  };

  test('walks every folder, giving relative POSIX paths and sizes', async () => {
    const root = await folderWith(tree);
    assert.deepEqual(await entries(source(root)), [
      { path: '.hidden.txt', size: 3 },
      { path: 'docs/deep/er.txt', size: 6 },
      { path: 'docs/guide.md', size: 5 },
      { path: 'node_modules/pkg/index.js', size: 1 },
      { path: 'notes.txt', size: 5 },
      { path: 'README.md', size: 4 },
    ]);
  });

  test('keeps to the include globs and leaves out the exclude globs', async () => {
    const root = await folderWith(tree);
    assert.deepEqual(await paths(source(root, { include: ['**/*.txt'] })), [
      '.hidden.txt',
      'docs/deep/er.txt',
      'notes.txt',
    ]);
    assert.deepEqual(
      await paths(source(root, { include: ['*.md', 'docs/**'], exclude: ['**/deep/**'] })),
      ['docs/guide.md', 'README.md'],
    );
  });

  test('skips an excluded folder whole', async () => {
    const root = await folderWith(tree);
    // "node_modules" matches the folder, not the file paths below it: only skipping the
    // folder leaves those out.
    const found = await paths(source(root, { exclude: ['node_modules', '.*'] }));
    assert.deepEqual(found, ['docs/deep/er.txt', 'docs/guide.md', 'notes.txt', 'README.md']);
  });

  test('stays in the top folder when not recursive', async () => {
    const root = await folderWith(tree);
    assert.deepEqual(await paths(source(root, { recursive: false })), [
      '.hidden.txt',
      'notes.txt',
      'README.md',
    ]);
  });

  test('streams in batches of the given size', async () => {
    const root = await folderWith();
    await mkdir(join(root, 'sub'));
    for (let i = 0; i < 1234; i++) await writeFile(join(root, i % 2 ? 'sub' : '', `f${i}`), '');
    const sizes = (await batches(source(root), 500)).map((b) => b.length);
    assert.deepEqual(sizes, [500, 500, 234]);
    const all = new Set((await batches(source(root), 500)).flat().map((e) => e.path));
    assert.equal(all.size, 1234);
    assert.deepEqual((await batches(source(await folderWith()), 500)).length, 0);
  });

  test('refuses a batch size that is not a positive whole number', async () => {
    const root = await folderWith();
    await assert.rejects(
      batches(source(root), 0),
      /batchSize must be a whole number of at least 1, got 0/,
    );
  });

  test('follows symlinks to files inside, and reports the ones it cannot follow', async () => {
    const outside = await folderWith({ 'secret.txt': 'secret' });
    const root = await folderWith({ 'real.txt': 'real', 'dir/inner.txt': 'in' });
    await symlink('real.txt', join(root, 'link-inside.txt'));
    await symlink(join(outside, 'secret.txt'), join(root, 'link-outside.txt'));
    await symlink('loop-b', join(root, 'loop-a'));
    await symlink('loop-a', join(root, 'loop-b'));
    await symlink('missing.txt', join(root, 'dangling.txt'));
    await symlink('dir', join(root, 'dir-link'));
    await symlink(outside, join(root, 'outside-dir-link'));
    assert.deepEqual(await entries(source(root)), [
      { path: 'dangling.txt', size: 0, problem: 'dangling symlink: its target does not exist' },
      { path: 'dir/inner.txt', size: 2 },
      { path: 'link-inside.txt', size: 4 },
      { path: 'link-outside.txt', size: 0, problem: 'symlink leads outside the source folder' },
      { path: 'loop-a', size: 0, problem: 'symlink cannot be followed: symlink loop' },
      { path: 'loop-b', size: 0, problem: 'symlink cannot be followed: symlink loop' },
      { path: 'real.txt', size: 4 },
    ]);
  });

  test('confines to the real folder when the source path is itself a symlink', async () => {
    const root = await folderWith({ 'a.txt': 'a' });
    await symlink('a.txt', join(root, 'b.txt'));
    await symlink(root, join(base, 'root-link'));
    assert.deepEqual(await paths(source(join(base, 'root-link'))), ['a.txt', 'b.txt']);
  });

  test('reports a FIFO as not a regular file', async () => {
    const root = await folderWith({ 'ok.txt': 'ok' });
    execFileSync('mkfifo', [join(root, 'pipe')]);
    assert.deepEqual(await entries(source(root)), [
      { path: 'ok.txt', size: 2 },
      { path: 'pipe', size: 0, problem: 'not a regular file: it is a FIFO' },
    ]);
  });

  test('reports a name that is not valid UTF-8, keeping two such names apart', async () => {
    const root = await folderWith();
    const named = (...bytes: number[]) =>
      Buffer.concat([Buffer.from(`${root}/bad`), Buffer.from(bytes), Buffer.from('.txt')]);
    await writeFile(named(0xff), 'x');
    await writeFile(named(0xfe), 'y');
    await mkdir(Buffer.concat([Buffer.from(`${root}/caf`), Buffer.from([0xe9])]));
    await writeFile(
      Buffer.concat([Buffer.from(`${root}/caf`), Buffer.from([0xe9]), Buffer.from('/ok.txt')]),
      'z',
    );
    const problem = 'file name is not valid UTF-8';
    assert.deepEqual(await entries(source(root)), [
      { path: 'bad\\xfe.txt', size: 1, problem },
      { path: 'bad\\xff.txt', size: 1, problem },
      { path: 'caf\\xe9/ok.txt', size: 1, problem },
    ]);
  });

  test('lists a name with a newline like any other', async () => {
    const root = await folderWith({ 'two\nlines.txt': 'ab', 'ünïcode ✓.txt': 'c' });
    assert.deepEqual(await paths(source(root, { include: ['*.txt'] })), [
      'two\nlines.txt',
      'ünïcode ✓.txt',
    ]);
    assert.deepEqual(await entries(source(root)), [
      { path: 'two\nlines.txt', size: 2 },
      { path: 'ünïcode ✓.txt', size: 1 },
    ]);
  });

  test('reports a file over the size limit, with its size', async () => {
    const root = await folderWith({ 'small.txt': '1234567890', 'big.txt': '12345678901' });
    assert.deepEqual(await entries(source(root, { maxFileSize: 10 })), [
      { path: 'big.txt', size: 11, problem: 'file is 11 bytes, over the limit of 10' },
      { path: 'small.txt', size: 10 },
    ]);
  });

  test('reports a folder it may not read, when not root', async (t) => {
    if (process.getuid?.() === 0) return t.skip('root reads every folder, whatever its mode');
    const root = await folderWith({ 'locked/a.txt': 'a', 'b.txt': 'b' });
    await chmod(join(root, 'locked'), 0o000);
    const found = await entries(source(root));
    await chmod(join(root, 'locked'), 0o755);
    assert.deepEqual(found, [
      { path: 'b.txt', size: 1 },
      { path: 'locked', size: 0, problem: 'folder cannot be read: permission denied' },
    ]);
  });
});

describe('readConfinedFile', () => {
  async function rejection(root: string, relPath: string, maxSize = 1024): Promise<string> {
    try {
      await readConfinedFile(root, relPath, maxSize);
    } catch (error) {
      assert.ok(error instanceof FileRejectedError, `a FileRejectedError, not ${String(error)}`);
      assert.equal(error.path, relPath);
      return error.reason;
    }
    assert.fail(`expected "${relPath}" to be rejected`);
  }

  test('reads a listed file, also through a symlink inside the folder', async () => {
    const root = await folderWith({ 'a/b.txt': 'content' });
    await symlink('a/b.txt', join(root, 'link'));
    assert.equal((await readConfinedFile(root, 'a/b.txt', 1024)).toString(), 'content');
    assert.equal((await readConfinedFile(root, 'link', 1024)).toString(), 'content');
  });

  test('refuses paths that climb out or are absolute', async () => {
    const root = await folderWith({ 'a.txt': 'a' });
    assert.match(await rejection(root, '../a.txt'), /leads outside the folder/);
    assert.match(await rejection(root, 'x/../../a.txt'), /leads outside the folder/);
    assert.match(await rejection(root, '/etc/passwd'), /is absolute/);
    assert.match(await rejection(root, ''), /empty/);
  });

  test('reports a file deleted since it was listed', async () => {
    const root = await folderWith({ 'a.txt': 'a' });
    const [listed] = await entries(source(root));
    await unlink(join(root, 'a.txt'));
    assert.equal(await rejection(root, listed?.path ?? ''), 'file not found');
  });

  test('refuses a directory and a FIFO, without blocking on the FIFO', async () => {
    const root = await folderWith({ 'dir/x': '' });
    execFileSync('mkfifo', [join(root, 'pipe')]);
    assert.equal(await rejection(root, 'dir'), 'is a directory');
    assert.equal(await rejection(root, 'pipe'), 'not a regular file: it is a FIFO');
  });

  test('refuses a file swapped for a symlink to outside since it was listed', async () => {
    const outside = await folderWith({ 'secret.txt': 'secret' });
    const root = await folderWith({ 'a.txt': 'a' });
    const [listed] = await entries(source(root));
    await unlink(join(root, 'a.txt'));
    await symlink(join(outside, 'secret.txt'), join(root, 'a.txt'));
    assert.equal(
      await rejection(root, listed?.path ?? ''),
      'symlink leads outside the source folder',
    );
  });

  test('refuses a file that grew over the limit since it was listed', async () => {
    const root = await folderWith({ 'a.txt': '123' });
    await writeFile(join(root, 'a.txt'), '12345678901');
    assert.equal(await rejection(root, 'a.txt', 10), 'file is 11 bytes, over the limit of 10');
  });

  test('reports permission denied, when not root', async (t) => {
    if (process.getuid?.() === 0) return t.skip('root reads every file, whatever its mode');
    const root = await folderWith({ 'a.txt': 'a' });
    await chmod(join(root, 'a.txt'), 0o000);
    assert.equal(await rejection(root, 'a.txt'), 'permission denied');
  });
});

describe('writeResultFile', () => {
  test('writes <path>.json, making folders, and replaces it on a second write', async () => {
    const out = join(await folderWith(), 'out');
    await writeResultFile(out, 'docs/a report.txt', { words: 3 });
    const file = join(out, 'docs', 'a report.txt.json');
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), { words: 3 });
    await writeResultFile(out, 'docs/a report.txt', { words: 4 });
    assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), { words: 4 });
    assert.deepEqual(await readdir(join(out, 'docs')), ['a report.txt.json']);
  });

  test('refuses paths that leave the folder, also through a symlinked subfolder', async () => {
    const outside = await folderWith();
    const out = await folderWith();
    await symlink(outside, join(out, 'escape'));
    await assert.rejects(writeResultFile(out, '../x', 1), /leads outside the folder/);
    await assert.rejects(
      writeResultFile(out, 'escape/x', 1),
      /is not a folder \(or is a symlink\)/,
    );
    assert.deepEqual(await readdir(outside), []);
  });
});
