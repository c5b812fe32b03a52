/**
 * Turning a file's bytes into text, or refusing to. Steps that work on text must not see a
 * PNG as a string of replacement characters, so anything that looks binary is an error.
 */

export interface DecodedText {
  text: string;
  /** 'utf-8', or 'utf-8-bom', 'utf-16le' or 'utf-16be' when a byte-order mark said so. */
  encoding: string;
  /** Byte sequences that were not valid in the encoding, each shown as U+FFFD. */
  invalidSequences: number;
}

export class BinaryFileError extends Error {
  override name = 'BinaryFileError';
  constructor() {
    super('binary file, not text');
  }
}

/** Above this share of invalid sequences per character, the file is taken to be binary. */
const MAX_INVALID_SHARE = 0.1;

const boms: { bytes: number[]; encoding: string; decoder: string }[] = [
  { bytes: [0xef, 0xbb, 0xbf], encoding: 'utf-8-bom', decoder: 'utf-8' },
  { bytes: [0xff, 0xfe], encoding: 'utf-16le', decoder: 'utf-16le' },
  { bytes: [0xfe, 0xff], encoding: 'utf-16be', decoder: 'utf-16be' },
];

export function decodeText(content: Buffer): DecodedText {
  const bom = boms.find((b) => b.bytes.every((byte, i) => content[i] === byte));
  const body = bom ? content.subarray(bom.bytes.length) : content;
  const decoder = bom?.decoder ?? 'utf-8';
  // UTF-16 text is full of NUL bytes, so that test only applies to the other encodings.
  if (decoder === 'utf-8' && body.includes(0)) throw new BinaryFileError();
  const { text, invalidSequences } = decode(body, decoder);
  if (text.includes('\0')) throw new BinaryFileError();
  if (invalidSequences / Math.max(1, text.length) > MAX_INVALID_SHARE) throw new BinaryFileError();
  return { text, encoding: bom?.encoding ?? 'utf-8', invalidSequences };
}

function decode(body: Buffer, decoder: string): { text: string; invalidSequences: number } {
  try {
    return {
      text: new TextDecoder(decoder, { fatal: true, ignoreBOM: true }).decode(body),
      invalidSequences: 0,
    };
  } catch {
    // Rare enough to afford a second pass: count what the lenient decoder had to replace.
    const text = new TextDecoder(decoder, { ignoreBOM: true }).decode(body);
    return {
      text,
      invalidSequences: countReplacements(text) - countGenuineReplacements(body, decoder),
    };
  }
}

/** Characters as a reader counts them: code points, so an emoji is one, not two. */
export function countChars(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    // A high surrogate followed by a low one is one character.
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

function countReplacements(text: string): number {
  let count = 0;
  for (let i = text.indexOf('\ufffd'); i !== -1; i = text.indexOf('\ufffd', i + 1)) count++;
  return count;
}

/** U+FFFD characters that the file really contains, which are not decoding failures. */
function countGenuineReplacements(body: Buffer, decoder: string): number {
  const needles: Record<string, number[]> = {
    'utf-8': [0xef, 0xbf, 0xbd],
    'utf-16le': [0xfd, 0xff],
    'utf-16be': [0xff, 0xfd],
  };
  const needle = Buffer.from(needles[decoder] ?? []);
  const step = decoder === 'utf-8' ? 1 : 2;
  let count = 0;
  for (let i = body.indexOf(needle); i !== -1; i = body.indexOf(needle, i + 1)) {
    if (i % step === 0) count++;
  }
  return count;
}
