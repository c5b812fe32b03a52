import { constants } from 'node:fs';
import { access, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import YAML from 'yaml';
import { z } from 'zod';
import { builtinSteps } from './builtin-steps.js';
import { isInside } from './confine.js';
import { messageOf, type ResolvedStep, type StepFunction } from './steps.js';

/**
 * What a workflow is, as a user writes it in JSON or YAML, and the checks that turn it into
 * something the engine can run. Every problem is reported with the path of the field at
 * fault, so a user can find it in their file.
 */

export class WorkflowError extends Error {
  override name = 'WorkflowError';
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
  }
}

const MiB = 1024 * 1024;
/** fs.readFile, and so a step's file content, tops out at 2 GiB. */
const MAX_FILE_SIZE = 2 ** 31 - 1;

const range = (min: number, max: number, whole = false) =>
  z.number().refine((v) => v >= min && v <= max && (!whole || Number.isInteger(v)), {
    error: ({ input }) =>
      `must be ${whole && !Number.isInteger(input) ? 'a whole number ' : ''}from ${min} to ${max}, got ${String(input)}`,
  });

const globs = z.array(z.string().min(1));

const sourceSchema = z
  .object({
    type: z.literal('local'),
    path: z.string().min(1),
    include: globs.default(['**']),
    exclude: globs.default([]),
    recursive: z.boolean().default(true),
    maxFileSize: range(1, MAX_FILE_SIZE, true).default(100 * MiB),
  })
  .strict();

const isModulePath = (use: string) => /^\.{0,2}\//.test(use);

const stepObject = z
  .object(
    {
      use: z.string(),
      name: z.string().min(1).max(100).optional(),
      options: z.record(z.string(), z.unknown()).default({}),
      timeoutSeconds: range(0.001, 86400).optional(),
    },
    {
      error: (issue) =>
        issue.code === 'invalid_type'
          ? `must be a built-in step name, a module path or { "use": ... }, got ${describe(issue.input)}`
          : undefined,
    },
  )
  .strict();

const stepSchema = z
  .preprocess((v) => (typeof v === 'string' ? { use: v } : v), stepObject)
  .refine((step) => builtinSteps.has(step.use) || isModulePath(step.use), {
    error: ({ input }) =>
      `unknown step ${JSON.stringify((input as { use: string }).use)} (built-ins: ${[...builtinSteps.keys()].join(', ')}; a module path starts with ./, ../ or /)`,
  })
  .transform((step) => ({ ...step, name: step.name ?? defaultStepName(step.use) }));

/** A module's step is named after its file, so "./steps/title.mjs" is "title". */
function defaultStepName(use: string): string {
  return isModulePath(use) ? basename(use, extname(use)) : use;
}

const workflowSchema = z
  .object({
    name: z.string().min(1).max(200),
    source: sourceSchema,
    steps: z.array(stepSchema).min(1, 'needs at least one step').superRefine(uniqueNames),
    destination: z
      .object({ outputFolder: z.string().min(1).optional() })
      .strict()
      .optional(),
    options: z
      .object({
        concurrency: range(1, 256, true).default(4),
        leaseSeconds: range(1, 86400, true).default(30),
        maxAttempts: range(1, 100, true).default(3),
        stepTimeoutSeconds: range(0.001, 86400).default(60),
        /** The wait before a failed file's first retry; the engine doubles it per attempt. */
        retryDelaySeconds: range(0, 3600).default(1),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/** Outputs are stored by step name, so two steps with one name would overwrite each other. */
function uniqueNames(steps: { name: string }[], ctx: z.RefinementCtx): void {
  steps.forEach(({ name }, i) => {
    const first = steps.findIndex((s) => s.name === name);
    if (first < i) {
      ctx.addIssue({
        code: 'custom',
        path: [i],
        message: `step name "${name}" is already used by steps[${first}]; give one a "name"`,
      });
    }
  });
}

export type WorkflowInput = z.input<typeof workflowSchema>;
export type WorkflowDefinition = z.output<typeof workflowSchema>;
export type SourceDefinition = WorkflowDefinition['source'];
export type StepDefinition = WorkflowDefinition['steps'][number];
export type WorkflowOptions = WorkflowDefinition['options'];

export function parseWorkflow(input: unknown): WorkflowDefinition {
  return parseOrThrow(workflowSchema, input, ['workflow']);
}

function parseOrThrow<T>(schema: z.ZodType<T>, input: unknown, at: PropertyKey[]): T {
  const result = schema.safeParse(input, { error: messageFor, reportInput: true });
  if (result.success) return result.data;
  throw new WorkflowError(
    result.error.issues.map((issue) => `${fieldPath([...at, ...issue.path])}: ${issue.message}`),
  );
}

/** Zod's messages reworded to read as a sentence about the field they follow. */
function messageFor(issue: z.core.$ZodRawIssue): string | undefined {
  switch (issue.code) {
    case 'invalid_type':
      if (issue.input === undefined) return 'is required';
      return `must be ${typeNames[issue.expected] ?? issue.expected}, got ${describe(issue.input)}`;
    case 'invalid_value':
      return `must be ${issue.values.map((v) => JSON.stringify(v)).join(' or ')}, got ${describe(issue.input)}`;
    case 'unrecognized_keys':
      return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    case 'too_small':
      return issue.origin === 'string' ? 'must not be empty' : undefined;
    case 'too_big':
      return issue.origin === 'string' ? `must be at most ${issue.maximum} characters` : undefined;
    default:
      return undefined;
  }
}

const typeNames: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  boolean: 'true or false',
  array: 'a list',
  object: 'an object',
  record: 'an object',
};

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'a list';
  if (value !== null && typeof value === 'object') return 'an object';
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function fieldPath(path: PropertyKey[]): string {
  return path
    .map((key, i) => {
      if (typeof key === 'number') return `[${key}]`;
      const name = String(key);
      if (!/^[A-Za-z_$][\w$-]*$/.test(name)) return `[${JSON.stringify(name)}]`;
      return i === 0 ? name : `.${name}`;
    })
    .join('');
}

/**
 * Reads a workflow file, JSON or YAML (by its extension, else by whether it starts with "{").
 * Relative paths in it are made absolute against the file's folder, as its author meant.
 */
export async function loadWorkflowFile(file: string): Promise<WorkflowDefinition> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new WorkflowError([`workflow file "${file}" cannot be read: ${messageOf(error)}`]);
  }
  const ext = extname(file).toLowerCase();
  const isJson = ext === '.json' || (!['.yaml', '.yml'].includes(ext) && /^\s*\{/.test(text));
  let data: unknown;
  try {
    data = isJson ? JSON.parse(text) : YAML.parse(text);
  } catch (error) {
    const format = isJson ? 'JSON' : 'YAML';
    throw new WorkflowError([
      `workflow file "${file}" is not valid ${format}: ${messageOf(error)}`,
    ]);
  }
  return withAbsolutePaths(parseWorkflow(data), dirname(resolve(file)));
}

function withAbsolutePaths(def: WorkflowDefinition, baseDir: string): WorkflowDefinition {
  const outputFolder = def.destination?.outputFolder;
  return {
    ...def,
    source: { ...def.source, path: resolve(baseDir, def.source.path) },
    steps: def.steps.map((s) => (isModulePath(s.use) ? { ...s, use: resolve(baseDir, s.use) } : s)),
    ...(outputFolder && { destination: { outputFolder: resolve(baseDir, outputFolder) } }),
  };
}

/**
 * The definition for `unstuck run <folder> --steps a,b,./my.mjs`: the folder as the source,
 * the steps in order, anything else from `extra`.
 */
export function workflowFromSteps(
  folder: string,
  steps: string[],
  extra: Pick<WorkflowInput, 'destination' | 'options'> & {
    name?: string;
    source?: Partial<Omit<z.input<typeof sourceSchema>, 'type' | 'path'>>;
  } = {},
): WorkflowDefinition {
  return parseWorkflow({
    name: extra.name ?? (basename(resolve(folder)) || folder),
    source: { ...extra.source, type: 'local', path: folder },
    steps,
    destination: extra.destination,
    options: extra.options,
  });
}

export interface ResolvedWorkflow {
  /** The definition with every path absolute, fit to store and resolve again anywhere. */
  definition: WorkflowDefinition;
  /** The source with its folder's real path, symlinks resolved, for confinement checks. */
  source: SourceDefinition;
  steps: ResolvedStep[];
  outputFolder?: string;
}

/**
 * Checks what can only be checked on this machine (folders exist, modules load, step options
 * are valid) and loads every step. Relative paths are taken from `baseDir`. All problems are
 * reported together, so a user fixes their file once.
 */
export async function resolveWorkflow(
  def: WorkflowInput,
  baseDir: string,
): Promise<ResolvedWorkflow> {
  // Parsed again: a definition read back from the database gets the defaults of this version.
  const parsed = parseWorkflow(def);
  const definition = withAbsolutePaths(parsed, baseDir);
  const problems: string[] = [];
  const check = async <T>(promise: Promise<T>): Promise<T | undefined> => {
    try {
      return await promise;
    } catch (error) {
      if (!(error instanceof WorkflowError)) throw error;
      problems.push(...error.problems);
      return undefined;
    }
  };
  const root = await check(sourceRoot(definition.source.path));
  const outputFolder = await check(checkOutputFolder(definition, root));
  const timeout = definition.options.stepTimeoutSeconds;
  const steps: (ResolvedStep | undefined)[] = [];
  // One by one, so problems are listed in the order of the steps.
  for (const [i, step] of parsed.steps.entries()) {
    steps.push(await check(loadStep(step, i, baseDir, timeout)));
  }
  if (problems.length > 0) throw new WorkflowError(problems);
  return {
    definition,
    source: { ...definition.source, path: root as string },
    steps: steps as ResolvedStep[],
    ...(outputFolder && { outputFolder }),
  };
}

async function sourceRoot(folder: string): Promise<string> {
  const field = 'workflow.source.path';
  const stats = await stat(folder).catch(folderProblem(field, folder));
  if (!stats.isDirectory()) throw new WorkflowError([`${field}: "${folder}" is not a folder`]);
  await access(folder, constants.R_OK | constants.X_OK).catch(folderProblem(field, folder));
  return realpath(folder);
}

async function checkOutputFolder(
  def: WorkflowDefinition,
  sourceRealPath: string | undefined,
): Promise<string | undefined> {
  const folder = def.destination?.outputFolder;
  if (folder === undefined) return undefined;
  const field = 'workflow.destination.outputFolder';
  // Results written inside the source would be listed, and processed, as source files.
  if ([def.source.path, sourceRealPath].some((src) => src && isInside(src, folder))) {
    throw new WorkflowError([`${field}: "${folder}" is inside the source folder`]);
  }
  const stats = await stat(folder).catch((error: NodeJS.ErrnoException) => {
    // A folder that does not exist yet is made when the first result is written.
    if (error.code !== 'ENOENT') folderProblem(field, folder)(error);
  });
  if (stats && !stats.isDirectory()) {
    throw new WorkflowError([`${field}: "${folder}" is not a folder`]);
  }
  return folder;
}

function folderProblem(field: string, folder: string) {
  return (error: NodeJS.ErrnoException): never => {
    if (error.code === 'ENOENT') {
      throw new WorkflowError([`${field}: folder "${folder}" does not exist`]);
    }
    throw new WorkflowError([`${field}: folder "${folder}" cannot be used: ${error.message}`]);
  };
}

async function loadStep(
  step: StepDefinition,
  index: number,
  baseDir: string,
  defaultTimeout: number,
): Promise<ResolvedStep> {
  const at = ['workflow', 'steps', index];
  const builtin = builtinSteps.get(step.use);
  const run = builtin
    ? builtin.create(parseOrThrow(builtin.options, step.options, [...at, 'options']))
    : await importStep(resolve(baseDir, step.use), `${fieldPath(at)}: module "${step.use}"`);
  const timeoutSeconds = step.timeoutSeconds ?? defaultTimeout;
  return { name: step.name, run, options: step.options, timeoutSeconds };
}

async function importStep(file: string, what: string): Promise<StepFunction> {
  let module: { default?: unknown };
  try {
    module = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (error) {
    throw new WorkflowError([`${what} did not load: ${messageOf(error)}`]);
  }
  if (typeof module.default !== 'function') {
    throw new WorkflowError([`${what} has no default export function`]);
  }
  return module.default as StepFunction;
}
