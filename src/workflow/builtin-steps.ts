import { createHash } from 'node:crypto';
import { z } from 'zod';
import { countChars } from './decode-text.js';
import { decodedText, type StepFunction } from './steps.js';

/**
 * The steps that ship with unstuck. Each declares its options as a schema, checked when the
 * workflow is resolved, so a bad pattern is reported before any file is claimed.
 */

export interface BuiltinStep {
  options: z.ZodType;
  create(options: unknown): StepFunction;
}

function builtin<T>(options: z.ZodType<T>, create: (options: T) => StepFunction): BuiltinStep {
  return { options, create: (parsed) => create(parsed as T) };
}

const noOptions = z.object({}).strict();

/** A JSON object's keys are listed up to this many, so a huge dictionary stays a small output. */
const MAX_LISTED_KEYS = 100;

const pattern = z.preprocess(
  (v) => (typeof v === 'string' ? { pattern: v } : v),
  z
    .object(
      { pattern: z.string(), flags: z.string().optional() },
      {
        error: (issue) =>
          issue.code === 'invalid_type' ? 'must be a pattern or { "pattern", "flags" }' : undefined,
      },
    )
    .strict()
    .transform((field, ctx) => {
      try {
        return new RegExp(field.pattern, field.flags);
      } catch (error) {
        ctx.issues.push({ code: 'custom', message: (error as Error).message, input: field });
        return z.NEVER;
      }
    }),
);

const regexOptions = z
  .object({
    fields: z
      .record(z.string(), pattern)
      .refine((fields) => Object.keys(fields).length > 0, 'needs at least one field'),
  })
  .strict();

export const builtinSteps: ReadonlyMap<string, BuiltinStep> = new Map(
  Object.entries({
    'decode-text': builtin(noOptions, () => (file) => {
      const { text, encoding, invalidSequences } = decodedText(file);
      return { encoding, chars: countChars(text), invalidSequences };
    }),
    count: builtin(noOptions, () => (file) => countText(file.text())),
    sha256: builtin(
      noOptions,
      () => (file) => createHash('sha256').update(file.content).digest('hex'),
    ),
    'json-parse': builtin(noOptions, () => (file) => describeJson(parseJson(file.text()))),
    'regex-extract': builtin(regexOptions, ({ fields }) => (file) => {
      const text = file.text();
      return Object.fromEntries(
        Object.entries(fields).map(([name, re]) => [name, extract(re, text)]),
      );
    }),
    noop: builtin(noOptions, () => () => null),
  }),
);

function countText(text: string): { lines: number; words: number; chars: number } {
  const breaks = countMatches(/\r\n|\r|\n/g, text);
  // A last line without a line break still counts as a line.
  const lines = text === '' || /[\r\n]$/.test(text) ? breaks : breaks + 1;
  return { lines, words: countMatches(/\S+/g, text), chars: countChars(text) };
}

/** Counted one match at a time: a large file's matches never sit in an array together. */
function countMatches(globalRe: RegExp, text: string): number {
  let count = 0;
  while (globalRe.exec(text)) count++;
  return count;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new Error(`invalid JSON: ${(error as Error).message}`, { cause: error });
  }
}

function describeJson(value: unknown): Record<string, unknown> {
  if (Array.isArray(value)) return { type: 'array', length: value.length };
  if (value === null) return { type: 'null' };
  if (typeof value !== 'object') return { type: typeof value };
  const keys = Object.keys(value);
  return { type: 'object', keys: keys.slice(0, MAX_LISTED_KEYS), keyCount: keys.length };
}

/**
 * The first capture group (null when it took no part), or the whole match when the pattern
 * has no group; with the g flag, that for every match.
 */
function extract(re: RegExp, text: string): string | (string | null)[] | null {
  const valueOf = (m: RegExpMatchArray) => (m.length > 1 ? (m[1] ?? null) : m[0]);
  if (re.global) return [...text.matchAll(re)].map(valueOf);
  // A fresh copy, so a sticky pattern's lastIndex does not carry over between files.
  const match = new RegExp(re).exec(text);
  return match ? valueOf(match) : null;
}
