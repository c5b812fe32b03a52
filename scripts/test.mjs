// npm test [file or folder ...]: unit tests, then integration tests, through node's test runner.
// The globs are expanded here because Node 20's --test does not expand them portably.
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';

const testFiles = (dir) =>
  readdirSync(dir)
    .filter((name) => name.endsWith('.test.ts'))
    .sort()
    .map((name) => join(dir, name));

const args = process.argv.slice(2);
const targets = args.length > 0 ? args : ['test/unit', 'test/integration'];
const files = targets.flatMap((target) => {
  const found = statSync(target, { throwIfNoEntry: false });
  if (found?.isDirectory()) return testFiles(target);
  if (found || args.length > 0) return [target]; // a missing named file: let node report it
  return [];
});

process.stdout.write(`running ${files.length} test file${files.length === 1 ? '' : 's'}\n`);
if (files.length === 0) process.exit(args.length > 0 ? 1 : 0);

const child = spawn(
  process.execPath,
  // A file whose tests are done must not hang the run on a handle left open (the chaos test
  // names any it finds), and no single test may run past ten minutes.
  [
    '--import',
    'tsx',
    '--test',
    '--test-concurrency=2',
    '--test-force-exit',
    '--test-timeout=600000',
    ...files,
  ],
  { stdio: 'inherit' },
);
// Ctrl-C reaches the child too: wait for its exit code rather than dying first.
process.on('SIGINT', () => undefined);
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
