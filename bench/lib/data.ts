/**
 * The benchmarks' data: files made once per run in a temporary directory from a fixed seed, and
 * removed at the end. Every value is a pure function of its index, so each workload can check the
 * work it did against the generator instead of against another system.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { xorshift32 } from "./stats.ts";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** The seed every data file derives from. */
export const SEED = 0x5eed_0001;
/** Bytes written per call while making files. */
const CHUNK_BYTES = 8 * MiB;
/** The byte of each 4 KiB page that the touch workload reads: one that varies with the data. */
export const TOUCH_BYTE_OFFSET = 6;
export const TOUCH_STRIDE_BYTES = 4 * KiB;

/**
 * The Float64 value at word index wordIndex for a seed: a whole number below 2^20 (a 32-bit
 * integer hash), so sums of up to 2^33 values are exact and do not depend on the order.
 */
export function valueAt(wordIndex: number, seed: number): number {
  let h = Math.imul(wordIndex ^ seed, 0x9e3779b1);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h >>> 12;
}

/**
 * The compressible data's Float64 value at wordIndex: a 12-bit reading held for
 * COMPRESSIBLE_RUN_WORDS words (a sampled sensor, say), so runs of equal 8-byte words repeat and
 * LZ4 packs it about 4-5 to 1, while every value is still a function of its index.
 */
export const COMPRESSIBLE_RUN_WORDS = 8;
export function compressibleValueAt(wordIndex: number, seed: number): number {
  return valueAt(Math.floor(wordIndex / COMPRESSIBLE_RUN_WORDS), seed) & 0xfff;
}

/** Sum of valueAt(i, seed) for i in [0, count). */
export function expectedSum(count: number, seed: number): number {
  let sum = 0;
  for (let i = 0; i < count; i++) sum += valueAt(i, seed);
  return sum;
}

/** Fills a chunk of Float64 values starting at word index firstWord. */
export function fillValues(target: Float64Array, firstWord: number, seed: number): void {
  for (let i = 0; i < target.length; i++) target[i] = valueAt(firstWord + i, seed);
}

export interface Float64File {
  path: string;
  byteLength: number;
  wordCount: number;
  seed: number;
  /** Sum of every value. */
  sum: number;
  /** Sum of the byte at TOUCH_BYTE_OFFSET of every 4 KiB page. */
  touchSum: number;
}

export interface U64File {
  path: string;
  byteLength: number;
  /** Of the 32-bit words, as pairs (low, high): sums mod 2^32 and XORs, order-independent. */
  checksum: U64Checksum;
}

export interface U64Checksum {
  lowSum: number;
  highSum: number;
  xor: number;
}

/** The temporary directory of one run and the files in it, each made on first use. */
export class DataDir {
  readonly path: string;
  readonly #float64 = new Map<number, Float64File>();
  readonly #u64 = new Map<number, U64File>();
  readonly #compressible = new Map<number, Float64File>();
  #scratchCount = 0;

  constructor(readonly progress: (message: string) => void) {
    this.path = mkdtempSync(join(tmpdir(), "bun-umap-bench-"));
  }

  /** A file of byteLength bytes of Float64 values from SEED. */
  float64File(byteLength: number): Float64File {
    const known = this.#float64.get(byteLength);
    if (known) return known;
    if (byteLength % TOUCH_STRIDE_BYTES !== 0) throw new RangeError(`data files are whole 4 KiB pages, got ${byteLength} bytes`);
    const path = join(this.path, `f64-${byteLength}.bin`);
    this.progress(`making ${path} (${formatBytes(byteLength)} of Float64, seed ${SEED.toString(16)})`);
    const chunk = new Float64Array(CHUNK_BYTES / 8);
    const chunkBytes = new Uint8Array(chunk.buffer);
    let sum = 0;
    let touchSum = 0;
    const fd = openSync(path, "w");
    try {
      for (let byteOffset = 0; byteOffset < byteLength; byteOffset += CHUNK_BYTES) {
        const length = Math.min(CHUNK_BYTES, byteLength - byteOffset);
        const words = chunk.subarray(0, length / 8);
        fillValues(words, byteOffset / 8, SEED);
        for (let i = 0; i < words.length; i++) sum += words[i]!;
        for (let at = TOUCH_BYTE_OFFSET; at < length; at += TOUCH_STRIDE_BYTES) touchSum += chunkBytes[at]!;
        writeAll(fd, chunkBytes.subarray(0, length));
      }
    } finally {
      closeSync(fd);
    }
    const file = { path, byteLength, wordCount: byteLength / 8, seed: SEED, sum, touchSum };
    this.#float64.set(byteLength, file);
    return file;
  }

  /** A file of byteLength bytes of compressibleValueAt values from SEED (touchSum is not kept: 0). */
  compressibleFile(byteLength: number): Float64File {
    const known = this.#compressible.get(byteLength);
    if (known) return known;
    if (byteLength % TOUCH_STRIDE_BYTES !== 0) throw new RangeError(`data files are whole 4 KiB pages, got ${byteLength} bytes`);
    const path = join(this.path, `compressible-${byteLength}.bin`);
    this.progress(`making ${path} (${formatBytes(byteLength)} of compressible Float64, seed ${SEED.toString(16)})`);
    const chunk = new Float64Array(CHUNK_BYTES / 8);
    let sum = 0;
    const fd = openSync(path, "w");
    try {
      for (let byteOffset = 0; byteOffset < byteLength; byteOffset += CHUNK_BYTES) {
        const words = chunk.subarray(0, Math.min(CHUNK_BYTES, byteLength - byteOffset) / 8);
        const firstWord = byteOffset / 8;
        for (let i = 0; i < words.length; i++) sum += words[i] = compressibleValueAt(firstWord + i, SEED);
        writeAll(fd, new Uint8Array(words.buffer, 0, words.byteLength));
      }
    } finally {
      closeSync(fd);
    }
    const file = { path, byteLength, wordCount: byteLength / 8, seed: SEED, sum, touchSum: 0 };
    this.#compressible.set(byteLength, file);
    return file;
  }

  /** A file of byteLength bytes of random unsigned 64-bit integers from SEED. */
  u64File(byteLength: number): U64File {
    const known = this.#u64.get(byteLength);
    if (known) return known;
    const path = join(this.path, `u64-${byteLength}.bin`);
    this.progress(`making ${path} (${formatBytes(byteLength)} of random u64, seed ${SEED.toString(16)})`);
    const next = xorshift32(SEED);
    const chunk = new Uint32Array(CHUNK_BYTES / 4);
    const fd = openSync(path, "w");
    try {
      for (let byteOffset = 0; byteOffset < byteLength; byteOffset += CHUNK_BYTES) {
        const words = chunk.subarray(0, Math.min(CHUNK_BYTES, byteLength - byteOffset) / 4);
        for (let i = 0; i < words.length; i++) words[i] = next();
        writeAll(fd, new Uint8Array(words.buffer, 0, words.byteLength));
      }
    } finally {
      closeSync(fd);
    }
    const file = { path, byteLength, checksum: u64ChecksumOfFile(path) };
    this.#u64.set(byteLength, file);
    return file;
  }

  /** A new scratch path in the run's directory (the caller makes the file). */
  scratchPath(name: string): string {
    return join(this.path, `${name}-${this.#scratchCount++}.bin`);
  }

  /** A copy of a file, for workloads that change their data (the sort). */
  copy(source: string, name: string): string {
    const target = this.scratchPath(name);
    Bun.spawnSync(["cp", "--reflink=never", source, target]).exitCode === 0 || copyPlain(source, target);
    return target;
  }

  /** A sparse file of byteLength bytes (reads as zeros). */
  sparseFile(name: string, byteLength: number): string {
    const path = this.scratchPath(name);
    const fd = openSync(path, "w");
    try {
      ftruncateSync(fd, byteLength);
    } finally {
      closeSync(fd);
    }
    return path;
  }

  remove(): void {
    rmSync(this.path, { recursive: true, force: true });
  }
}

function copyPlain(source: string, target: string): void {
  const input = openSync(source, "r");
  const output = openSync(target, "w");
  try {
    const buffer = new Uint8Array(CHUNK_BYTES);
    for (;;) {
      const got = readSync(input, buffer, 0, buffer.length, null);
      if (got === 0) break;
      writeAll(output, buffer.subarray(0, got));
    }
  } finally {
    closeSync(input);
    closeSync(output);
  }
}

export function writeAll(fd: number, bytes: Uint8Array, position?: number): void {
  let done = 0;
  while (done < bytes.length) {
    const wrote = writeSync(fd, bytes, done, bytes.length - done, position === undefined ? null : position + done);
    if (wrote <= 0) throw new Error(`writeSync wrote ${wrote} bytes`);
    done += wrote;
  }
}

/** Reads a whole file through a reused buffer, calling visit for each chunk. */
export function readChunks(path: string, chunkBytes: number, visit: (chunk: Uint8Array, byteOffset: number) => void): void {
  const fd = openSync(path, "r");
  try {
    const buffer = new Uint8Array(chunkBytes);
    let byteOffset = 0;
    for (;;) {
      let got = 0;
      // Fill the whole buffer unless the file ends, so chunks stay word-aligned.
      while (got < buffer.length) {
        const n = readSync(fd, buffer, got, buffer.length - got, byteOffset + got);
        if (n === 0) break;
        got += n;
      }
      if (got === 0) break;
      visit(buffer.subarray(0, got), byteOffset);
      byteOffset += got;
      if (got < buffer.length) break;
    }
  } finally {
    closeSync(fd);
  }
}

/** Brings a file into the page cache (for the warm runs). */
export function warmPageCache(path: string): void {
  let consumed = 0;
  readChunks(path, CHUNK_BYTES, (chunk) => {
    consumed += chunk[0]!;
  });
  if (consumed < 0) throw new Error("unreachable");
}

export function u64Checksum(words: Uint32Array, into: U64Checksum = { lowSum: 0, highSum: 0, xor: 0 }): U64Checksum {
  let { lowSum, highSum, xor } = into;
  for (let i = 0; i + 1 < words.length; i += 2) {
    lowSum = (lowSum + words[i]!) >>> 0;
    highSum = (highSum + words[i + 1]!) >>> 0;
    xor = (xor ^ words[i]! ^ Math.imul(words[i + 1]!, 0x01000193)) >>> 0;
  }
  into.lowSum = lowSum;
  into.highSum = highSum;
  into.xor = xor;
  return into;
}

export function u64ChecksumOfFile(path: string): U64Checksum {
  const checksum = { lowSum: 0, highSum: 0, xor: 0 };
  readChunks(path, CHUNK_BYTES, (chunk) => {
    u64Checksum(new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length / 4), checksum);
  });
  return checksum;
}

/**
 * Checks a file of u64 is sorted ascending and holds the same values as before (by checksum).
 * Returns null or what is wrong.
 */
export function checkSortedFile(path: string, before: U64Checksum): string | null {
  const checksum = { lowSum: 0, highSum: 0, xor: 0 };
  let previousHigh = 0;
  let previousLow = 0;
  let problem: string | null = null;
  readChunks(path, CHUNK_BYTES, (chunk, byteOffset) => {
    const words = new Uint32Array(chunk.buffer, chunk.byteOffset, chunk.length / 4);
    u64Checksum(words, checksum);
    if (problem) return;
    for (let i = 0; i < words.length; i += 2) {
      const low = words[i]!, high = words[i + 1]!;
      if (high < previousHigh || (high === previousHigh && low < previousLow)) {
        problem = `not sorted at element ${(byteOffset / 8 + i / 2).toLocaleString("en-US")}`;
        return;
      }
      previousHigh = high;
      previousLow = low;
    }
  });
  if (problem) return problem;
  if (checksum.lowSum !== before.lowSum || checksum.highSum !== before.highSum || checksum.xor !== before.xor) {
    return "the sorted values differ from the input's (checksum)";
  }
  return null;
}

/** Checks a file holds valueAt(i, seed) at every word. Returns null or the first wrong word. */
export function checkValuesFile(path: string, seed: number, wordCount: number): string | null {
  let problem: string | null = null;
  let words = 0;
  readChunks(path, CHUNK_BYTES, (chunk, byteOffset) => {
    if (problem) return;
    const values = new Float64Array(chunk.buffer, chunk.byteOffset, chunk.length / 8);
    const first = byteOffset / 8;
    for (let i = 0; i < values.length; i++) {
      if (values[i] !== valueAt(first + i, seed)) {
        problem = `word ${first + i}: got ${values[i]}, expected ${valueAt(first + i, seed)}`;
        return;
      }
    }
    words += values.length;
  });
  if (problem) return problem;
  return words === wordCount ? null : `the file holds ${words} words, expected ${wordCount}`;
}

export function formatBytes(bytes: number): string {
  if (bytes >= GiB && bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes >= MiB) return `${+(bytes / MiB).toFixed(1)} MiB`;
  if (bytes >= KiB) return `${+(bytes / KiB).toFixed(1)} KiB`;
  return `${bytes} B`;
}
