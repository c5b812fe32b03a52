import { createHash } from 'node:crypto';
import type { Logger } from '../log.js';
import { WorkflowError, type ResolvedWorkflow } from '../workflow/definition.js';
import { FileRejectedError, readConfinedFile } from '../workflow/read-file.js';
import { createStepFile, messageOf, runSteps, StepError } from '../workflow/steps.js';
import { BinaryFileError } from '../workflow/decode-text.js';
import type { ClaimedFile, Outcome } from './queue.js';

/**
 * Takes one claimed file through its workflow and says how it went. Every failure of the file
 * or its workflow becomes an outcome with its reason, so one bad file cannot stop the others;
 * only a database failure (loading the workflow) is thrown, and the file's lease brings it back.
 */
export async function processFile(
  load: (workflowId: string) => Promise<ResolvedWorkflow>,
  file: ClaimedFile,
  log: Logger,
): Promise<Outcome> {
  const base = { id: file.id, attempt: file.attempt, sha256: null, result: null, timings: {} };
  let workflow: ResolvedWorkflow;
  try {
    workflow = await load(file.workflowId);
  } catch (error) {
    // A folder or module missing on this machine may be back on the next attempt.
    if (error instanceof WorkflowError) return failed(base, error, true, 1, file.attempt);
    throw error;
  }
  const { source, outputFolder } = workflow;
  const { options } = workflow.definition;
  let content: Buffer;
  try {
    content = await readConfinedFile(source.path, file.path, source.maxFileSize);
  } catch (error) {
    return failed(
      base,
      error,
      !(error instanceof FileRejectedError),
      options.retryDelaySeconds,
      file.attempt,
    );
  }
  const sha256 = createHash('sha256').update(content).digest('hex');
  try {
    const { output, timings } = await runSteps(
      workflow.steps,
      createStepFile(file.path, content),
      file.attempt,
      log,
    );
    return {
      ...base,
      ok: true,
      retryable: false,
      sha256,
      result: output,
      timings,
      ...(outputFolder && { output: { folder: outputFolder, path: file.path } }),
      error: null,
      retryDelaySeconds: 0,
    };
  } catch (error) {
    // A binary file stays binary however often it is read: no point in another attempt.
    const retryable = !(error instanceof StepError && error.cause instanceof BinaryFileError);
    return { ...failed(base, error, retryable, options.retryDelaySeconds, file.attempt), sha256 };
  }
}

function failed(
  base: Pick<Outcome, 'id' | 'attempt' | 'sha256' | 'result' | 'timings'>,
  error: unknown,
  retryable: boolean,
  retryDelaySeconds: number,
  attempt: number,
): Outcome {
  // Doubling per attempt, capped: a step that fails for a passing reason gets room to recover.
  const delay = Math.min(300, retryDelaySeconds * 2 ** (attempt - 1));
  return { ...base, ok: false, retryable, error: messageOf(error), retryDelaySeconds: delay };
}
