// The files a chaos run processes and what must become of each: ok-* and flaky-* files end
// COMPLETED (flaky ones after a failed first attempt), binary-* files end ERROR at once.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WorkflowInput } from '../src/workflow/definition.js';
import type { Random } from './random.js';

export const stepModule = resolve(dirname(fileURLToPath(import.meta.url)), 'steps/work.mjs');

export type Kind = 'ok' | 'flaky' | 'binary';

export interface Workload {
  folder: string;
  workflowFile: string;
  /** Every file's kind, by path relative to the folder. */
  files: Map<string, Kind>;
  /** One line per step call: "<path> <attempt> <pid>". */
  invocationLog: string;
}

export interface WorkloadOptions {
  files: number;
  seed: number;
  /** The workflow's lease; short, so that recovery after a lost worker is quick. */
  leaseSeconds: number;
  /**
   * Attempts per file. Every fault that outlasts a lease costs the files in flight one attempt
   * and flaky files spend one on their deliberate failure, so this leaves room for several.
   */
  maxAttempts: number;
  stepMs: [number, number];
}

export const defaultWorkload = {
  leaseSeconds: 3,
  maxAttempts: 6,
  stepMs: [5, 50] as [number, number],
};

export async function createWorkload(
  dir: string,
  rng: Random,
  options: WorkloadOptions,
): Promise<Workload> {
  const folder = join(dir, 'files');
  await mkdir(folder, { recursive: true });
  const files = new Map<string, Kind>();
  const width = String(options.files).length;
  for (let i = 0; i < options.files; i++) {
    const roll = rng.next();
    const kind: Kind = roll < 0.04 ? 'binary' : roll < 0.1 ? 'flaky' : 'ok';
    const name = `${kind}-${String(i).padStart(width, '0')}.${kind === 'binary' ? 'bin' : 'txt'}`;
    await writeFile(join(folder, name), content(kind, rng));
    files.set(name, kind);
  }
  const invocationLog = join(dir, 'invocations.log');
  await writeFile(invocationLog, '');
  const workflow: WorkflowInput = {
    name: 'chaos',
    source: { type: 'local', path: folder },
    steps: [
      {
        use: stepModule,
        name: 'work',
        options: {
          seed: options.seed,
          minMs: options.stepMs[0],
          maxMs: options.stepMs[1],
          log: invocationLog,
        },
      },
    ],
    options: {
      concurrency: 4,
      leaseSeconds: options.leaseSeconds,
      maxAttempts: options.maxAttempts,
      retryDelaySeconds: 0.2,
      stepTimeoutSeconds: 30,
    },
  };
  const workflowFile = join(dir, 'workflow.json');
  await writeFile(workflowFile, JSON.stringify(workflow, null, 2));
  return { folder, workflowFile, files, invocationLog };
}

function content(kind: Kind, rng: Random): Buffer {
  const size = rng.int(20, 2000);
  if (kind === 'binary') {
    // NUL bytes make it binary for the engine's text decoding, whatever else is in it.
    return Buffer.from(Array.from({ length: size }, (_, i) => (i % 7 === 0 ? 0 : rng.int(1, 255))));
  }
  const words = ['lease', 'fence', 'sweep', 'retry', 'commit', 'claim', 'worker', 'file'];
  const out: string[] = [];
  for (let length = 0; length < size;) {
    const word = rng.pick(words);
    out.push(word);
    length += word.length + 1;
  }
  return Buffer.from(`${out.join(' ')}\n`);
}

/** What must become of a file of this kind. */
export const expectedStatus = (kind: Kind): 'COMPLETED' | 'ERROR' =>
  kind === 'binary' ? 'ERROR' : 'COMPLETED';
