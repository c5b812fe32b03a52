import { resolve } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import type { Status } from '../engine/executions.js';
import { packageRoot } from '../paths.js';
import type { Unstuck } from '../unstuck.js';
import {
  loadWorkflowFile,
  workflowFromSteps,
  type WorkflowDefinition,
} from '../workflow/definition.js';
import { NotFoundError, UsageError } from './exit.js';
import { executionsTable, filesTable, print, resultsTable, summaryLine } from './print.js';
import { progressDisplay } from './progress.js';
import { onShutdown, positiveInt, withUnstuck } from './session.js';

interface WorkflowFlags {
  steps?: string;
  workflow?: string;
  output?: string;
  include?: string[];
  exclude?: string[];
  json?: boolean;
}

const defaultSteps = 'decode-text,count,sha256';

function workflowOptions(command: Command): Command {
  return command
    .argument('[folder]', 'the folder of files to process (overrides the workflow file’s source)')
    .option(
      '--steps <list>',
      `comma-separated built-in steps or module paths (default ${defaultSteps})`,
    )
    .option('--workflow <file>', 'a workflow definition, JSON or YAML')
    .option('--output <folder>', 'also write one JSON result per file into this folder')
    .option('--include <glob...>', 'only files matching these globs')
    .option('--exclude <glob...>', 'skip files matching these globs')
    .option('--json', 'print JSON for scripts');
}

async function workflowFrom(
  folder: string | undefined,
  flags: WorkflowFlags,
): Promise<WorkflowDefinition> {
  if (flags.workflow && flags.steps)
    throw new UsageError('give either --steps or --workflow, not both');
  const source = {
    ...(flags.include && { include: flags.include }),
    ...(flags.exclude && { exclude: flags.exclude }),
  };
  const destination = flags.output ? { outputFolder: resolve(flags.output) } : undefined;
  if (flags.workflow) {
    const def = await loadWorkflowFile(flags.workflow);
    return {
      ...def,
      source: { ...def.source, ...source, ...(folder && { path: resolve(folder) }) },
      ...(destination && { destination }),
    };
  }
  if (!folder) throw new UsageError('name a folder to process, or a --workflow file');
  const steps = (flags.steps ?? defaultSteps)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return workflowFromSteps(resolve(folder), steps, { source, destination });
}

/** Submits, then processes the execution in this process until every file is terminal. */
async function runExecution(
  u: Unstuck,
  def: WorkflowDefinition,
  concurrency: number | undefined,
  json: boolean,
) {
  const { executionId, total, workflow } = await u.submit(def);
  if (!json) process.stderr.write(`execution ${executionId}: ${total} files\n`);
  const worker = u.worker({
    concurrency: concurrency ?? workflow.definition.options.concurrency,
    executionId,
  });
  const progress = json ? undefined : progressDisplay();
  const interrupted = new AbortController();
  onShutdown(() => interrupted.abort());
  worker.start();
  try {
    const summary = await u.wait(executionId, {
      onProgress: (s) => progress?.update(s),
      signal: interrupted.signal,
    });
    progress?.done();
    const failed = summary.failed > 0 ? await u.files(executionId, 'ERROR') : [];
    print(
      json,
      { ...summary, failedFiles: failed.map((f) => ({ path: f.path, error: f.error })) },
      () =>
        [summaryLine(summary), ...failed.map((f) => `  ERROR ${f.path}: ${f.error}`)].join('\n'),
    );
    return summary;
  } finally {
    progress?.done();
    await worker.stop();
  }
}

export function executionCommands(program: Command): void {
  workflowOptions(program.command('run'))
    .description('create an execution and process it in this process, with a progress bar')
    .option(
      '--workers <n>',
      'files processed at once (default: the workflow’s concurrency)',
      positiveInt,
    )
    .action(async (folder: string | undefined, flags: WorkflowFlags & { workers?: number }) => {
      // Read first: a bad workflow file is reported without opening (or starting) a database.
      const def = await workflowFrom(folder, flags);
      await withUnstuck(async (u) => {
        await runExecution(u, def, flags.workers, !!flags.json);
      });
    });

  workflowOptions(program.command('submit'))
    .description('create an execution and print its id; `unstuck worker` processes it')
    .action(async (folder: string | undefined, flags: WorkflowFlags) => {
      const def = await workflowFrom(folder, flags);
      await withUnstuck(async (u) => {
        const { executionId, total } = await u.submit(def);
        print(
          !!flags.json,
          { executionId },
          () => `execution ${executionId}: ${total} files submitted`,
        );
      });
    });

  program
    .command('worker')
    .description('a long-lived worker for every execution; stops cleanly on SIGINT/SIGTERM')
    .option('--concurrency <n>', 'files processed at once', positiveInt, 4)
    .action((flags: { concurrency: number }) =>
      withUnstuck(async (u) => {
        const worker = u.worker({ concurrency: flags.concurrency });
        worker.start();
        await new Promise<void>((resolve) => onShutdown(resolve));
        await worker.stop();
      }),
    );

  program
    .command('status')
    .description('one execution in detail, or the most recent ones')
    .argument('[execution-id]', 'an execution id', executionId)
    .option('--json', 'print JSON for scripts')
    .action((id: string | undefined, flags: { json?: boolean }) =>
      withUnstuck(async (u) => {
        if (!id) {
          const recent = await u.executions();
          return print(!!flags.json, recent, () => executionsTable(recent));
        }
        const summary = await found(u.status(id), id);
        print(!!flags.json, summary, () => summaryLine(summary));
      }),
    );

  program
    .command('files')
    .description('the file executions of an execution')
    .argument('<execution-id>', 'an execution id', executionId)
    .option(
      '--status <status>',
      'only PENDING, EXECUTING, COMPLETED, ERROR or STOPPED files',
      status,
    )
    .option('--json', 'print JSON for scripts (includes each file’s result)')
    .action((id: string, flags: { status?: Status; json?: boolean }) =>
      withUnstuck(async (u) => {
        await found(u.status(id), id);
        const files = await u.files(id, flags.status);
        print(!!flags.json, files, () => filesTable(files));
      }),
    );

  program
    .command('stop')
    .description(
      'stop an execution: pending files stop at once, running ones when their step returns',
    )
    .argument('<execution-id>', 'an execution id', executionId)
    .option('--json', 'print JSON for scripts')
    .action((id: string, flags: { json?: boolean }) =>
      withUnstuck(async (u) => {
        const summary = await found(u.stop(id), id);
        print(!!flags.json, summary, () => summaryLine(summary));
      }),
    );

  program
    .command('retry')
    .description('give every ERROR file of an execution a new attempt')
    .argument('<execution-id>', 'an execution id', executionId)
    .option('--json', 'print JSON for scripts')
    .action((id: string, flags: { json?: boolean }) =>
      withUnstuck(async (u) => {
        await found(u.status(id), id);
        const retried = await u.retry(id);
        print(
          !!flags.json,
          { executionId: id, retried },
          () => `execution ${id}: ${retried} files back to PENDING`,
        );
      }),
    );

  program
    .command('demo')
    .description('process the bundled sample documents on the embedded database (npm start)')
    .action(() =>
      withUnstuck(async (u) => {
        const def = await loadWorkflowFile(resolve(packageRoot, 'samples', 'workflow.json'));
        const summary = await runExecution(u, def, undefined, false);
        process.stdout.write(`\n${resultsTable(await u.files(summary.id, 'COMPLETED'))}\n\n`);
        const where = u.embedded
          ? `embedded PostgreSQL, data in ${u.embedded.dataDir}`
          : 'DATABASE_URL';
        process.stdout.write(
          `results are in table unstuck.file_results (${where}); try: npx unstuck status\n`,
        );
      }),
    );
}

async function found<T>(value: Promise<T | undefined>, id: string): Promise<T> {
  const v = await value;
  if (v === undefined) throw new NotFoundError(`execution ${id} does not exist`);
  return v;
}

function status(value: string): Status {
  const upper = value.toUpperCase();
  if (!['PENDING', 'EXECUTING', 'COMPLETED', 'ERROR', 'STOPPED'].includes(upper)) {
    throw new InvalidArgumentError(
      `--status must be PENDING, EXECUTING, COMPLETED, ERROR or STOPPED, got "${value}"`,
    );
  }
  return upper as Status;
}

/** Execution ids are whole numbers (bigint): anything else names no execution. */
function executionId(value: string): string {
  if (!/^\d{1,18}$/.test(value)) throw new NotFoundError(`execution ${value} does not exist`);
  return value;
}
