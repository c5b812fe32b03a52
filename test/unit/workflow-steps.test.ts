import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { BinaryFileError, decodeText } from '../../src/workflow/decode-text.js';
import {
  parseWorkflow,
  resolveWorkflow,
  type WorkflowInput,
} from '../../src/workflow/definition.js';
import { createStepFile, runSteps, StepError, type StepsResult } from '../../src/workflow/steps.js';

const silent = pino({ level: 'silent' });
let dir: string;

// A 1x1 PNG, as a real binary file.
const png = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
  'base64',
);

const modules: Record<string, string> = {
  'title.mjs': `export default async function (file, context) {
  const first = file.text().split('\\n')[0];
  return { title: first, prefix: context.options.prefix, attempt: context.attempt, chars: context.previous['decode-text']?.chars };
}`,
  'throws.mjs': `export default () => { throw new Error('boom'); }`,
  'rejects-string.mjs': `export default async () => { throw 'plain string'; }`,
  'hangs.mjs': `export default () => new Promise(() => {});`,
  'blocks.mjs': `export default () => { const end = Date.now() + 100; while (Date.now() < end); return 1; }`,
  'waits-for-abort.mjs': `export default (file, { signal }) => new Promise((_, reject) => {
  signal.addEventListener('abort', () => { globalThis.abortSeen = signal.reason; reject(new Error('aborted by signal')); });
});`,
  'bigint.mjs': `export default () => ({ n: 10n })`,
  'nan.mjs': `export default () => ({ ratio: 0 / 0 })`,
  'function.mjs': `export default () => ({ callback() {} })`,
  'cycle.mjs': `export default () => { const a = {}; a.self = a; return a; }`,
  'nothing.mjs': `export default () => {}`,
  'date.mjs': `export default () => ({ at: new Date(0) })`,
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'unstuck-steps-'));
  for (const [name, code] of Object.entries(modules)) await writeFile(join(dir, name), code);
});
after(() => rm(dir, { recursive: true, force: true }));

async function run(
  steps: WorkflowInput['steps'],
  content: Buffer | string,
  options: WorkflowInput['options'] = {},
): Promise<StepsResult> {
  const workflow = await resolveWorkflow(
    parseWorkflow({ name: 't', source: { type: 'local', path: '.' }, steps, options }),
    dir,
  );
  const file = createStepFile('doc.txt', Buffer.isBuffer(content) ? content : Buffer.from(content));
  return runSteps(workflow.steps, file, 1, silent);
}

async function output(step: WorkflowInput['steps'][number], content: Buffer | string) {
  return Object.values((await run([step], content)).output)[0];
}

async function stepError(steps: WorkflowInput['steps'], content = 'x', timeout = 60) {
  try {
    await run(steps, content, { stepTimeoutSeconds: timeout });
  } catch (error) {
    assert.ok(error instanceof StepError, `a StepError, not ${String(error)}`);
    return error;
  }
  assert.fail('expected the steps to fail');
}

describe('decode-text', () => {
  test('decodes UTF-8 and counts characters as code points', async () => {
    assert.deepEqual(await output('decode-text', 'héllo 👋\n'), {
      encoding: 'utf-8',
      chars: 8,
      invalidSequences: 0,
    });
  });

  test('strips a UTF-8 byte-order mark', () => {
    const decoded = decodeText(Buffer.from('\ufeffTitle', 'utf8'));
    assert.deepEqual(decoded, { text: 'Title', encoding: 'utf-8-bom', invalidSequences: 0 });
  });

  test('decodes UTF-16 that announces itself with a BOM', () => {
    const le = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('hi there', 'utf16le')]);
    assert.deepEqual(decodeText(le), {
      text: 'hi there',
      encoding: 'utf-16le',
      invalidSequences: 0,
    });
    const be = Buffer.from(le.subarray(2)).swap16();
    const withBom = Buffer.concat([Buffer.from([0xfe, 0xff]), be]);
    assert.equal(decodeText(withBom).text, 'hi there');
  });

  test('takes a PNG, or anything with NUL bytes, as binary', async () => {
    assert.throws(() => decodeText(png), BinaryFileError);
    assert.throws(() => decodeText(Buffer.from('text\0more')), /binary file, not text/);
    const error = await stepError(['decode-text'], png as unknown as string);
    assert.equal(error.message, 'step "decode-text" failed: binary file, not text');
    assert.ok(error.cause instanceof BinaryFileError);
  });

  test('takes mostly invalid UTF-8 as binary, a stray invalid byte as text', () => {
    const noise = Buffer.from(Array.from({ length: 256 }, (_, i) => 0x80 + (i % 0x7f)));
    assert.throws(() => decodeText(noise), BinaryFileError);
    const latin1 = Buffer.concat([
      Buffer.from('A long line of text about a caf'),
      Buffer.from([0xe9, 0x0a]),
    ]);
    assert.deepEqual(
      { ...decodeText(latin1), text: undefined },
      { text: undefined, encoding: 'utf-8', invalidSequences: 1 },
    );
  });

  test('does not count a genuine U+FFFD as an invalid sequence', () => {
    const text = Buffer.concat([Buffer.from('ok \ufffd here '), Buffer.from([0xff])]);
    assert.equal(decodeText(text).invalidSequences, 1);
  });

  test('file.text() throws the same error for binary content', () => {
    assert.throws(
      () => createStepFile('x.png', png).text(),
      /^BinaryFileError: binary file, not text$/,
    );
  });
});

describe('count', () => {
  const cases: [string, string, { lines: number; words: number; chars: number }][] = [
    ['an empty file', '', { lines: 0, words: 0, chars: 0 }],
    ['a final line without a newline', 'one two\nthree', { lines: 2, words: 3, chars: 13 }],
    ['CRLF and blank lines', 'a\r\n\r\nb c\r\n', { lines: 3, words: 3, chars: 10 }],
    // 34 UTF-16 units but 33 characters: the rose is one.
    [
      'a poem with emoji',
      'Roses are red 🌹\nViolets are blue\n',
      { lines: 2, words: 7, chars: 33 },
    ],
  ];
  for (const [why, text, expected] of cases) {
    test(`counts ${why}`, async () => assert.deepEqual(await output('count', text), expected));
  }
});

describe('sha256', () => {
  test('hashes the bytes, text or not', async () => {
    assert.equal(
      await output('sha256', 'abc'),
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    assert.equal(await output('sha256', png), createHash('sha256').update(png).digest('hex'));
  });
});

describe('json-parse', () => {
  test('describes objects, arrays and scalars', async () => {
    assert.deepEqual(await output('json-parse', '\ufeff{"name": "app", "port": 8080}'), {
      type: 'object',
      keys: ['name', 'port'],
      keyCount: 2,
    });
    assert.deepEqual(await output('json-parse', '[1, 2, 3]'), { type: 'array', length: 3 });
    assert.deepEqual(await output('json-parse', '"hi"'), { type: 'string' });
    assert.deepEqual(await output('json-parse', 'null'), { type: 'null' });
  });

  test('lists at most 100 keys of a large object', async () => {
    const big = JSON.stringify(
      Object.fromEntries(Array.from({ length: 250 }, (_, i) => [`k${i}`, i])),
    );
    const described = (await output('json-parse', big)) as { keys: string[]; keyCount: number };
    assert.equal(described.keys.length, 100);
    assert.equal(described.keyCount, 250);
  });

  test('fails with the parser message on invalid JSON', async () => {
    const error = await stepError(['json-parse'], '{"name": "app",}');
    assert.match(error.message, /^step "json-parse" failed: invalid JSON: .*position 15/);
    assert.equal(error.reason, 'failed');
  });
});

describe('regex-extract', () => {
  const doc = '# Quarterly report\n\nContact: ana@example.com or bo@example.org\nStatus: draft\n';
  test('extracts the first group, the whole match, all matches, or null', async () => {
    const fields = {
      title: { pattern: '^# (.+)$', flags: 'm' },
      status: 'Status: \\w+',
      emails: { pattern: '[\\w.]+@[\\w.]+\\w', flags: 'g' },
      domains: { pattern: '@([\\w.]+\\w)', flags: 'g' },
      owner: 'Owner: (.+)',
      optional: '(x)?Status',
    };
    assert.deepEqual(await output({ use: 'regex-extract', options: { fields } }, doc), {
      title: 'Quarterly report',
      status: 'Status: draft',
      emails: ['ana@example.com', 'bo@example.org'],
      domains: ['example.com', 'example.org'],
      owner: null,
      optional: null,
    });
  });

  test('a sticky pattern starts afresh on every file', async () => {
    const { output: out } = await run(
      [
        {
          use: 'regex-extract',
          name: 'a',
          options: { fields: { word: { pattern: '\\w+', flags: 'y' } } },
        },
        {
          use: 'regex-extract',
          name: 'b',
          options: { fields: { word: { pattern: '\\w+', flags: 'y' } } },
        },
      ],
      'first second',
    );
    assert.deepEqual(out, { a: { word: 'first' }, b: { word: 'first' } });
  });

  test('refuses binary content', async () => {
    const error = await stepError(
      [{ use: 'regex-extract', options: { fields: { a: 'a' } } }],
      png as never,
    );
    assert.match(error.message, /binary file, not text/);
  });
});

describe('noop', () => {
  test('returns null', async () => assert.equal(await output('noop', png), null));
});

describe('runSteps', () => {
  test('runs steps in order, passing options, attempt and earlier outputs', async () => {
    const result = await run(
      ['decode-text', { use: './title.mjs', options: { prefix: '>' } }, 'sha256'],
      'My title\nbody',
    );
    assert.deepEqual(Object.keys(result.output), ['decode-text', 'title', 'sha256']);
    assert.deepEqual(result.output.title, {
      title: 'My title',
      prefix: '>',
      attempt: 1,
      chars: 13,
    });
    assert.deepEqual(Object.keys(result.timings), ['decode-text', 'title', 'sha256']);
    assert.ok(Object.values(result.timings).every((ms) => ms >= 0 && ms < 5000));
  });

  test('a throwing step fails with its message', async () => {
    const error = await stepError(['count', './throws.mjs', 'sha256']);
    assert.equal(error.message, 'step "throws" failed: boom');
    assert.equal(error.step, 'throws');
    assert.equal(error.reason, 'failed');
    assert.equal((error.cause as Error).message, 'boom');
    const plain = await stepError(['./rejects-string.mjs']);
    assert.equal(plain.message, 'step "rejects-string" failed: plain string');
  });

  test('a hanging step times out, in bounded time', async () => {
    const started = Date.now();
    const error = await stepError([{ use: './hangs.mjs', timeoutSeconds: 0.2 }]);
    assert.equal(error.message, 'step "hangs" timed out after 0.2 s');
    assert.equal(error.reason, 'timed-out');
    assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
  });

  test('the workflow step timeout applies when the step has none', async () => {
    const error = await stepError(['./hangs.mjs'], 'x', 0.05);
    assert.equal(error.message, 'step "hangs" timed out after 0.05 s');
  });

  test('a step that blocks the event loop past its time still times out', async () => {
    const error = await stepError([{ use: './blocks.mjs', timeoutSeconds: 0.02 }]);
    assert.equal(error.message, 'step "blocks" timed out after 0.02 s');
  });

  test('on timeout the signal fires, and the timeout is what is reported', async () => {
    const error = await stepError([{ use: './waits-for-abort.mjs', timeoutSeconds: 0.05 }]);
    assert.equal(error.reason, 'timed-out');
    assert.equal((globalThis as { abortSeen?: unknown }).abortSeen, error);
  });

  for (const [module, says] of [
    ['bigint', /a bigint at key "n" is not JSON/],
    ['nan', /NaN at key "ratio" is not JSON/],
    ['function', /a function at key "callback" is not JSON/],
    ['cycle', /circular/],
  ] as const) {
    test(`a step returning ${module} fails as unstorable`, async () => {
      const error = await stepError([`./${module}.mjs`]);
      assert.equal(error.reason, 'bad-output');
      assert.match(
        error.message,
        new RegExp(`^step "${module}" returned a value that cannot be stored: `),
      );
      assert.match(error.message, says);
    });
  }

  test('outputs are stored as JSON: nothing is null, a Date its string', async () => {
    const { output: out } = await run(['./nothing.mjs', './date.mjs'], 'x');
    assert.deepEqual(out, { nothing: null, date: { at: '1970-01-01T00:00:00.000Z' } });
  });
});
