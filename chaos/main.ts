// npm run chaos [-- --fault NAME] [--seed N] [--seeds K] [--files N] [--timeout S] [--keep]
// Runs every fault (or one) for K seeds, prints one table row per run, and exits non-zero on
// any violation. Seeds are base, base+1, ...: a row's seed replays it with --fault and --seed.
import { parseArgs } from 'node:util';
import { faultNamed, faults } from './faults.js';
import { freshSeed } from './random.js';
import { runMatrix } from './matrix.js';

const { values } = parseArgs({
  options: {
    fault: { type: 'string', multiple: true },
    seed: { type: 'string' },
    seeds: { type: 'string', default: '1' },
    files: { type: 'string', default: '500' },
    timeout: { type: 'string', default: '90' },
    keep: { type: 'boolean', default: false },
    list: { type: 'boolean', default: false },
  },
});

if (values.list) {
  for (const f of faults)
    process.stdout.write(`${f.name.padEnd(26)} ${f.path.padEnd(10)} ${f.description}\n`);
  process.exit(0);
}

const number = (name: string, text: string, min: number) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    process.stderr.write(`--${name} must be a whole number of at least ${min}, got "${text}"\n`);
    process.exit(2);
  }
  return n;
};

let selected;
try {
  selected = values.fault ? values.fault.map(faultNamed) : faults;
} catch (error) {
  process.stderr.write(`${(error as Error).message}\n`);
  process.exit(2);
}
const base = values.seed === undefined ? freshSeed() : number('seed', values.seed, 0);
const { violations } = await runMatrix({
  faults: selected,
  seeds: Array.from({ length: number('seeds', values.seeds, 1) }, (_, i) => base + i),
  files: number('files', values.files, 10),
  timeoutMs: number('timeout', values.timeout, 10) * 1000,
  keep: values.keep,
  out: (text) => process.stdout.write(`${text}\n`),
});
process.exit(violations > 0 ? 1 : 0);
