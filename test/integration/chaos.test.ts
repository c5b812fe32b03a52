// The chaos matrix's CI subset: every fault once, one fixed seed, fewer files, through the same
// code as `npm run chaos` (its run function, not a shell). Each run is bounded; together they
// stay well under five minutes on a 2-core machine. PgBouncer rows are mandatory in CI.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { faults } from '../../chaos/faults.js';
import { runChaos } from '../../chaos/run.js';
import { details, header, line } from '../../chaos/table.js';
import { pgbouncerSkipReason } from '../harness/pgbouncer.js';

const SEED = Number(process.env.CHAOS_SEED ?? 20261);
const FILES = 150;
const RUN_TIMEOUT_MS = 90_000;

describe(`chaos matrix, seed ${SEED} (npm run chaos -- --seed ${SEED} --files ${FILES})`, () => {
  const started = Date.now();
  for (const fault of faults) {
    const skip = fault.path === 'pgbouncer' ? pgbouncerSkipReason() : undefined;
    test(
      `${fault.name}: ${fault.description}`,
      { skip, timeout: RUN_TIMEOUT_MS + 60_000 },
      async (t) => {
        const result = await runChaos({
          fault,
          seed: SEED,
          files: FILES,
          timeoutMs: RUN_TIMEOUT_MS,
        });
        t.diagnostic(header());
        t.diagnostic(line(result));
        t.diagnostic(`${Math.round((Date.now() - started) / 1000)} s since the first run began`);
        assert.deepEqual(result.violations, [], details(result));
        assert.equal(result.files, FILES);
        assert.equal(result.completed + result.error, FILES);
      },
    );
  }
});

// Every run ends its servers, proxies, poolers and processes: name anything still open, so a
// test process that does not exit says why.
after(() => {
  const handles = (process as unknown as { _getActiveHandles(): object[] })._getActiveHandles();
  const open = handles
    .map((h) => {
      const s = h as {
        constructor?: { name?: string };
        pid?: number;
        remotePort?: number;
        fd?: number;
      };
      if (s.fd === 0 || s.fd === 1 || s.fd === 2) return undefined; // stdio
      return `${s.constructor?.name ?? 'handle'}${s.pid ? ` pid ${s.pid}` : ''}${s.remotePort ? ` port ${s.remotePort}` : ''}`;
    })
    .filter(Boolean);
  if (open.length > 0)
    process.stderr.write(`chaos test: still open after the runs: ${open.join(', ')}\n`);
});
