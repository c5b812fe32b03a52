import { performance } from 'node:perf_hooks';
import type { Logger } from '../log.js';
import { decodeText, type DecodedText } from './decode-text.js';

/**
 * The contract between the engine and a step, and the runner that takes one file through a
 * workflow's steps in order, each within its time limit.
 */

export interface StepFile {
  /** The path relative to the source folder, with / between folders. */
  path: string;
  size: number;
  content: Buffer;
  /** The content as text; throws "binary file, not text" for anything that is not. */
  text(): string;
}

export interface StepContext {
  options: Record<string, unknown>;
  /** Outputs of the steps that ran before this one, by step name. */
  previous: Record<string, unknown>;
  /** 1 on the first try, counting up on each retry of the file. */
  attempt: number;
  /** Fires when the step's time is up; a long step should stop when it does. */
  signal: AbortSignal;
  log: Logger;
}

/** What a user module exports by default: `export default async function (file, context)`. */
export type StepFunction = (file: StepFile, context: StepContext) => unknown;

export interface ResolvedStep {
  name: string;
  run: StepFunction;
  options: Record<string, unknown>;
  timeoutSeconds: number;
}

export interface StepsResult {
  output: Record<string, unknown>;
  /** Milliseconds each step took, by step name. */
  timings: Record<string, number>;
}

export class StepError extends Error {
  override name = 'StepError';
  constructor(
    readonly step: string,
    readonly reason: 'failed' | 'timed-out' | 'bad-output',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const decodedFiles = new WeakMap<StepFile, DecodedText>();

export function createStepFile(path: string, content: Buffer): StepFile {
  const file: StepFile = {
    path,
    size: content.length,
    content,
    text: () => decodedText(file).text,
  };
  return file;
}

/** The file decoded once, however many steps ask for its text. */
export function decodedText(file: StepFile): DecodedText {
  let decoded = decodedFiles.get(file);
  if (!decoded) {
    decoded = decodeText(file.content);
    decodedFiles.set(file, decoded);
  }
  return decoded;
}

export async function runSteps(
  steps: ResolvedStep[],
  file: StepFile,
  attempt: number,
  log: Logger,
): Promise<StepsResult> {
  const output: Record<string, unknown> = {};
  const timings: Record<string, number> = {};
  for (const step of steps) {
    const started = performance.now();
    const context = { options: step.options, previous: { ...output }, attempt };
    output[step.name] = await runStep(step, file, context, log.child({ step: step.name }));
    timings[step.name] = Math.round((performance.now() - started) * 1000) / 1000;
  }
  return { output, timings };
}

async function runStep(
  step: ResolvedStep,
  file: StepFile,
  context: Omit<StepContext, 'signal' | 'log'>,
  log: Logger,
): Promise<unknown> {
  const limit = deadline(step);
  const running = (async () => step.run(file, { ...context, signal: limit.signal, log }))();
  // A step that ignores its signal may still settle after the timeout; nobody is listening.
  running.catch(() => {});
  try {
    const value = await Promise.race([running, limit.expired]);
    // The timer cannot fire while a step blocks the event loop (a busy loop, a catastrophic
    // regex), so a step that overran that way is caught here.
    if (limit.passed()) throw limit.error();
    return toJson(step.name, value);
  } catch (error) {
    if (error instanceof StepError) throw error;
    throw new StepError(step.name, 'failed', `step "${step.name}" failed: ${messageOf(error)}`, {
      cause: error,
    });
  } finally {
    limit.clear();
  }
}

/** The step's time limit: a promise that rejects, and a signal that fires, when it is up. */
function deadline(step: ResolvedStep) {
  const ms = step.timeoutSeconds * 1000;
  const started = performance.now();
  const error = () =>
    new StepError(
      step.name,
      'timed-out',
      `step "${step.name}" timed out after ${step.timeoutSeconds} s`,
    );
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const timedOut = error();
      // Rejected before the abort, so this wins over whatever the step throws on abort.
      reject(timedOut);
      controller.abort(timedOut);
    }, ms);
  });
  return {
    expired,
    signal: controller.signal,
    error,
    passed: () => performance.now() - started > ms,
    clear: () => clearTimeout(timer),
  };
}

/**
 * The output as it will be stored: JSON. Values JSON would silently turn into null or drop
 * (NaN, functions, symbols) are errors, since they are almost always a bug in the step.
 */
function toJson(step: string, value: unknown): unknown {
  if (value === undefined) return null;
  try {
    const text = JSON.stringify(value, (key, v: unknown) => {
      if (isUnrepresentable(v)) {
        const where = key === '' ? '' : ` at key "${key}"`;
        throw new Error(`${describe(v)}${where} is not JSON`);
      }
      return v;
    });
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new StepError(
      step,
      'bad-output',
      `step "${step}" returned a value that cannot be stored: ${messageOf(error)}`,
      { cause: error },
    );
  }
}

function isUnrepresentable(v: unknown): boolean {
  return (
    typeof v === 'function' ||
    typeof v === 'symbol' ||
    typeof v === 'bigint' ||
    (typeof v === 'number' && !Number.isFinite(v))
  );
}

function describe(v: unknown): string {
  return typeof v === 'number' ? String(v) : `a ${typeof v}`;
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
