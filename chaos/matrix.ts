// Faults × seeds, one run after another (they share the machine's two cores), reported as
// they finish and again as one table at the end. Shared by `npm run chaos` and the CI test.
import type { Fault } from './faults.js';
import { runChaos, type RunResult } from './run.js';
import { details, header, legend, line, table } from './table.js';

export interface MatrixOptions {
  faults: Fault[];
  seeds: number[];
  files: number;
  timeoutMs: number;
  keep?: boolean;
  out: (text: string) => void;
}

export async function runMatrix(
  options: MatrixOptions,
): Promise<{ results: RunResult[]; violations: number }> {
  const { out } = options;
  const results: RunResult[] = [];
  out(
    `chaos: ${options.faults.length} faults x seeds ${options.seeds.join(', ')}, ${options.files} files per run`,
  );
  out(header());
  for (const seed of options.seeds) {
    for (const fault of options.faults) {
      const result = await runChaos({
        fault,
        seed,
        files: options.files,
        timeoutMs: options.timeoutMs,
        keep: options.keep,
      });
      results.push(result);
      out(line(result));
    }
  }
  out('');
  out(table(results));
  out(legend);
  out('');
  for (const result of results) out(details(result));
  const violations = results.filter((r) => r.violations.length > 0).length;
  out(
    violations === 0
      ? `\nall ${results.length} runs kept every invariant`
      : `\n${violations} of ${results.length} runs broke an invariant`,
  );
  return { results, violations };
}
