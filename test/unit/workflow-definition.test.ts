import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  loadWorkflowFile,
  parseWorkflow,
  resolveWorkflow,
  workflowFromSteps,
  WorkflowError,
  type WorkflowInput,
} from '../../src/workflow/definition.js';
import { createStepFile } from '../../src/workflow/steps.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'unstuck-definition-'));
  await mkdir(join(dir, 'docs'));
  await writeFile(join(dir, 'plain-file.txt'), 'not a folder');
  await writeFile(join(dir, 'upper.mjs'), 'export default (file) => file.text().toUpperCase();\n');
  await writeFile(join(dir, 'named-only.mjs'), 'export const step = () => 1;\n');
  await writeFile(join(dir, 'broken.mjs'), 'export default (file => ;\n');
});
after(() => rm(dir, { recursive: true, force: true }));

const minimal = (): WorkflowInput => ({
  name: 'demo',
  source: { type: 'local', path: 'docs' },
  steps: ['count'],
});

/** The problems of a definition that must not parse. */
function problems(input: unknown): string[] {
  try {
    parseWorkflow(input);
  } catch (error) {
    assert.ok(error instanceof WorkflowError, `a WorkflowError, not ${String(error)}`);
    return error.problems;
  }
  assert.fail(`expected ${JSON.stringify(input)} to be rejected`);
}

async function resolveProblems(input: WorkflowInput): Promise<string[]> {
  try {
    await resolveWorkflow(parseWorkflow(input), dir);
  } catch (error) {
    assert.ok(error instanceof WorkflowError, `a WorkflowError, not ${String(error)}`);
    return error.problems;
  }
  assert.fail(`expected ${JSON.stringify(input)} to be rejected at resolve time`);
}

describe('parseWorkflow', () => {
  test('fills in every default', () => {
    const def = parseWorkflow(minimal());
    assert.deepEqual(def.source, {
      type: 'local',
      path: 'docs',
      include: ['**'],
      exclude: [],
      recursive: true,
      maxFileSize: 100 * 1024 * 1024,
    });
    assert.deepEqual(def.steps, [{ use: 'count', name: 'count', options: {} }]);
    assert.deepEqual(def.options, {
      concurrency: 4,
      leaseSeconds: 30,
      maxAttempts: 3,
      stepTimeoutSeconds: 60,
      retryDelaySeconds: 1,
    });
  });

  test('is idempotent, so a stored definition parses again to itself', () => {
    const def = parseWorkflow({ ...minimal(), steps: ['count', './steps/title.mjs'] });
    assert.deepEqual(parseWorkflow(JSON.parse(JSON.stringify(def))), def);
    assert.equal(def.steps[1]?.name, 'title');
  });

  const cases: { why: string; change: (w: Record<string, unknown>) => void; says: string }[] = [
    { why: 'not an object', change: () => {}, says: 'workflow: must be an object, got null' },
    {
      why: 'missing name',
      change: (w) => delete w.name,
      says: 'workflow.name: is required',
    },
    { why: 'empty name', change: (w) => (w.name = ''), says: 'workflow.name: must not be empty' },
    {
      why: 'long name',
      change: (w) => (w.name = 'x'.repeat(201)),
      says: 'workflow.name: must be at most 200 characters',
    },
    {
      why: 'unknown top-level field',
      change: (w) => (w.stpes = []),
      says: 'workflow: unknown field "stpes"',
    },
    {
      why: 'other source type',
      change: (w) => (w.source = { type: 's3', path: 'x' }),
      says: 'workflow.source.type: must be "local", got "s3"',
    },
    {
      why: 'source without path',
      change: (w) => (w.source = { type: 'local' }),
      says: 'workflow.source.path: is required',
    },
    {
      why: 'include not a list',
      change: (w) => (w.source = { type: 'local', path: 'x', include: '*.txt' }),
      says: 'workflow.source.include: must be a list, got "*.txt"',
    },
    {
      why: 'empty glob',
      change: (w) => (w.source = { type: 'local', path: 'x', exclude: ['a', ''] }),
      says: 'workflow.source.exclude[1]: must not be empty',
    },
    {
      why: 'recursive not a boolean',
      change: (w) => (w.source = { type: 'local', path: 'x', recursive: 'no' }),
      says: 'workflow.source.recursive: must be true or false, got "no"',
    },
    {
      why: 'maxFileSize of zero',
      change: (w) => (w.source = { type: 'local', path: 'x', maxFileSize: 0 }),
      says: 'workflow.source.maxFileSize: must be from 1 to 2147483647, got 0',
    },
    {
      why: 'no steps',
      change: (w) => (w.steps = []),
      says: 'workflow.steps: needs at least one step',
    },
    {
      why: 'unknown built-in',
      change: (w) => (w.steps = ['count', 'sha256', 'foo']),
      says: 'workflow.steps[2]: unknown step "foo" (built-ins: decode-text, count, sha256, json-parse, regex-extract, noop',
    },
    {
      why: 'unknown step in object form',
      change: (w) => (w.steps = [{ use: 'steps/x.mjs' }]),
      says: 'workflow.steps[0]: unknown step "steps/x.mjs"',
    },
    {
      why: 'step of the wrong type',
      change: (w) => (w.steps = [42]),
      says: 'workflow.steps[0]: must be a built-in step name, a module path or { "use": ... }, got 42',
    },
    {
      why: 'unknown step field',
      change: (w) => (w.steps = [{ use: 'count', option: {} }]),
      says: 'workflow.steps[0]: unknown field "option"',
    },
    {
      why: 'step options not an object',
      change: (w) => (w.steps = [{ use: 'count', options: [] }]),
      says: 'workflow.steps[0].options: must be an object, got a list',
    },
    {
      why: 'step timeout out of range',
      change: (w) => (w.steps = [{ use: 'count', timeoutSeconds: 0 }]),
      says: 'workflow.steps[0].timeoutSeconds: must be from 0.001 to 86400, got 0',
    },
    {
      why: 'duplicate step names',
      change: (w) => (w.steps = ['count', './lib/count.mjs']),
      says: 'workflow.steps[1]: step name "count" is already used by steps[0]; give one a "name"',
    },
    {
      why: 'unknown destination field',
      change: (w) => (w.destination = { folder: 'out' }),
      says: 'workflow.destination: unknown field "folder"',
    },
    {
      why: 'negative concurrency',
      change: (w) => (w.options = { concurrency: -3 }),
      says: 'workflow.options.concurrency: must be from 1 to 256, got -3',
    },
    {
      why: 'fractional lease',
      change: (w) => (w.options = { leaseSeconds: 2.5 }),
      says: 'workflow.options.leaseSeconds: must be a whole number from 1 to 86400, got 2.5',
    },
    {
      why: 'too many attempts',
      change: (w) => (w.options = { maxAttempts: 101 }),
      says: 'workflow.options.maxAttempts: must be from 1 to 100, got 101',
    },
    {
      why: 'step timeout as a string',
      change: (w) => (w.options = { stepTimeoutSeconds: '5' }),
      says: 'workflow.options.stepTimeoutSeconds: must be a number, got "5"',
    },
    {
      why: 'unknown option',
      change: (w) => (w.options = { retries: 5 }),
      says: 'workflow.options: unknown field "retries"',
    },
  ];
  for (const { why, change, says } of cases) {
    test(`rejects ${why}, naming the field`, () => {
      const input: Record<string, unknown> | null = why === 'not an object' ? null : minimal();
      if (input) change(input);
      const found = problems(input);
      assert.ok(
        found.some((p) => p.startsWith(says)),
        `expected a problem starting ${JSON.stringify(says)}, got ${JSON.stringify(found)}`,
      );
    });
  }

  test('reports every problem at once', () => {
    const found = problems({ name: '', source: { type: 'local', path: 'x' }, steps: ['nope'] });
    assert.equal(found.length, 2);
  });
});

describe('loadWorkflowFile', () => {
  test('reads JSON and makes its paths absolute against its folder', async () => {
    const file = join(dir, 'w.json');
    const input = {
      ...minimal(),
      steps: ['count', './upper.mjs'],
      destination: { outputFolder: 'out' },
    };
    await writeFile(file, JSON.stringify(input));
    const def = await loadWorkflowFile(file);
    assert.equal(def.source.path, join(dir, 'docs'));
    assert.equal(def.steps[1]?.use, join(dir, 'upper.mjs'));
    assert.equal(def.steps[1]?.name, 'upper');
    assert.equal(def.destination?.outputFolder, join(dir, 'out'));
  });

  test('reads YAML, by extension or by content', async () => {
    const yaml = 'name: from yaml\nsource:\n  type: local\n  path: docs\nsteps: [sha256]\n';
    for (const name of ['w.yaml', 'w.yml', 'workflow']) {
      await writeFile(join(dir, name), yaml);
      assert.equal((await loadWorkflowFile(join(dir, name))).name, 'from yaml');
    }
  });

  test('names the file and the format it failed to parse', async () => {
    await writeFile(join(dir, 'bad.json'), '{"name": ');
    await assert.rejects(loadWorkflowFile(join(dir, 'bad.json')), (e: Error) => {
      assert.ok(e instanceof WorkflowError);
      assert.match(e.message, /bad\.json" is not valid JSON: /);
      return true;
    });
    await writeFile(join(dir, 'bad.yaml'), 'name: [unclosed\n');
    await assert.rejects(loadWorkflowFile(join(dir, 'bad.yaml')), /bad\.yaml" is not valid YAML: /);
    await assert.rejects(
      loadWorkflowFile(join(dir, 'missing.json')),
      /missing\.json" cannot be read/,
    );
  });

  test('validates the parsed content', async () => {
    await writeFile(
      join(dir, 'invalid.yaml'),
      'name: x\nsource: {type: local, path: docs}\nsteps: [foo]\n',
    );
    await assert.rejects(
      loadWorkflowFile(join(dir, 'invalid.yaml')),
      /workflow\.steps\[0\]: unknown step "foo"/,
    );
  });
});

describe('resolveWorkflow', () => {
  test('checks the source folder exists', async () => {
    const found = await resolveProblems({ ...minimal(), source: { type: 'local', path: 'nope' } });
    assert.deepEqual(found, [`workflow.source.path: folder "${join(dir, 'nope')}" does not exist`]);
  });

  test('checks the source is a folder', async () => {
    const input = { ...minimal(), source: { type: 'local' as const, path: 'plain-file.txt' } };
    assert.deepEqual(await resolveProblems(input), [
      `workflow.source.path: "${join(dir, 'plain-file.txt')}" is not a folder`,
    ]);
  });

  test('refuses an output folder that is a file or inside the source', async () => {
    const asFile = await resolveProblems({
      ...minimal(),
      destination: { outputFolder: 'plain-file.txt' },
    });
    assert.match(
      asFile.join(),
      /^workflow\.destination\.outputFolder: ".*plain-file\.txt" is not a folder$/,
    );
    const inside = await resolveProblems({
      ...minimal(),
      destination: { outputFolder: 'docs/out' },
    });
    assert.match(
      inside.join(),
      /^workflow\.destination\.outputFolder: .* is inside the source folder$/,
    );
  });

  test('reports a module that does not load', async () => {
    const found = await resolveProblems({
      ...minimal(),
      steps: ['count', './broken.mjs', './none.mjs'],
    });
    assert.equal(found.length, 2);
    assert.match(
      found[0] ?? '',
      /^workflow\.steps\[1\]: module "\.\/broken\.mjs" did not load: .+/,
    );
    assert.match(found[1] ?? '', /^workflow\.steps\[2\]: module "\.\/none\.mjs" did not load: .+/);
  });

  test('reports a module without a default export function', async () => {
    assert.deepEqual(await resolveProblems({ ...minimal(), steps: ['./named-only.mjs'] }), [
      'workflow.steps[0]: module "./named-only.mjs" has no default export function',
    ]);
  });

  test('validates built-in step options, naming the field', async () => {
    const found = await resolveProblems({
      ...minimal(),
      steps: [
        {
          use: 'regex-extract',
          options: { fields: { title: '(', mail: { pattern: 'a', flags: 'q' } } },
        },
        { use: 'regex-extract', name: 'empty', options: { fields: {} } },
        { use: 'regex-extract', name: 'none' },
        { use: 'count', options: { verbose: true } },
      ],
    });
    assert.deepEqual(
      found.map((p) => p.replace(/:.*/s, '')),
      [
        'workflow.steps[0].options.fields.title',
        'workflow.steps[0].options.fields.mail',
        'workflow.steps[1].options.fields',
        'workflow.steps[2].options.fields',
        'workflow.steps[3].options',
      ],
    );
    assert.match(found[0] ?? '', /Invalid regular expression: \/\(\/: Unterminated group/);
    assert.match(found[3] ?? '', /is required/);
    assert.match(found[4] ?? '', /unknown field "verbose"/);
  });

  test('loads built-ins and modules, with their time limits', async () => {
    const workflow = await resolveWorkflow(
      parseWorkflow({
        ...minimal(),
        steps: ['count', { use: './upper.mjs', name: 'shout', timeoutSeconds: 2 }],
        options: { stepTimeoutSeconds: 9 },
      }),
      dir,
    );
    assert.equal(workflow.source.path, join(dir, 'docs'));
    assert.equal(workflow.definition.steps[1]?.use, join(dir, 'upper.mjs'));
    assert.deepEqual(
      workflow.steps.map((s) => [s.name, s.timeoutSeconds]),
      [
        ['count', 9],
        ['shout', 2],
      ],
    );
    const shout = workflow.steps[1];
    assert.ok(shout);
    assert.equal(await shout.run(createStepFile('a.txt', Buffer.from('hi')), {} as never), 'HI');
  });
});

describe('workflowFromSteps', () => {
  test('builds the definition the CLI runs', () => {
    const def = workflowFromSteps(join(dir, 'docs'), ['count', 'sha256', './upper.mjs'], {
      options: { concurrency: 2 },
      source: { include: ['*.txt'] },
    });
    assert.equal(def.name, 'docs');
    assert.equal(def.source.path, join(dir, 'docs'));
    assert.deepEqual(def.source.include, ['*.txt']);
    assert.deepEqual(
      def.steps.map((s) => s.name),
      ['count', 'sha256', 'upper'],
    );
    assert.equal(def.options.concurrency, 2);
  });

  test('names a bad step by its place in the list', () => {
    assert.throws(
      () => workflowFromSteps('.', ['count', 'wc']),
      /workflow\.steps\[1\]: unknown step "wc"/,
    );
  });
});
