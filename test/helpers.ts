/**
 * Test data that identifies itself, after the kernel's userfaultfd selftests: the 32-bit word at
 * byte offset 4*i holds patternWord(i), so a misplaced, stale or zero page shows at once, and
 * the failure message can say which word of which page is wrong.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UmapError } from "../src/errors.ts";
import { xorshift32 } from "../bench/lib/stats.ts";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const SEED = 0x9e3779b9;

export function patternWord(wordIndex: number): number {
  return (wordIndex ^ SEED) >>> 0;
}

export function patternByte(byteOffset: number): number {
  return (patternWord(Math.floor(byteOffset / 4)) >>> ((byteOffset % 4) * 8)) & 0xff;
}

/** Fills target with the pattern bytes that start at byteOffset. */
export function fillPattern(target: Uint8Array, byteOffset: number): void {
  let i = 0;
  // Bytes up to the next word boundary, whole words, then the tail.
  for (; i < target.length && (byteOffset + i) % 4 !== 0; i++) target[i] = patternByte(byteOffset + i);
  const words = Math.floor((target.length - i) / 4);
  if (words > 0) {
    const firstWord = (byteOffset + i) / 4;
    const view = new DataView(target.buffer, target.byteOffset + i, words * 4);
    for (let w = 0; w < words; w++) view.setUint32(w * 4, patternWord(firstWord + w), true);
    i += words * 4;
  }
  for (; i < target.length; i++) target[i] = patternByte(byteOffset + i);
}

/** A temporary directory removed by the returned function. */
export function tempDir(prefix = "bun-umap-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Writes a file of byteLength pattern bytes. */
export function writePatternFile(path: string, byteLength: number): void {
  const chunk = new Uint8Array(Math.min(byteLength, 8 * MiB));
  const parts: Uint8Array[] = [];
  for (let offset = 0; offset < byteLength; offset += chunk.length) {
    const part = new Uint8Array(Math.min(chunk.length, byteLength - offset));
    fillPattern(part, offset);
    parts.push(part);
  }
  writeFileSync(path, Buffer.concat(parts));
}

/**
 * Checks bytes that should hold the pattern from byteOffset on. Returns null, or a message that
 * names the first wrong byte by page and offset.
 */
export function checkPattern(bytes: Uint8Array, byteOffset: number, pageSize: number): string | null {
  const expected = new Uint8Array(bytes.length);
  fillPattern(expected, byteOffset);
  if (Buffer.compare(bytes, expected) === 0) return null;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== expected[i]) {
      const at = byteOffset + i;
      return `byte ${at} (page ${Math.floor(at / pageSize)}, offset ${at % pageSize}): got ${bytes[i]}, expected ${expected[i]}`;
    }
  }
  return null;
}

/** A deterministic pseudo-random generator in [0, 1) (the benchmarks' xorshift32), so failures can be replayed. */
export function random(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() / 2 ** 32;
}

/**
 * The UmapError a promise (or a function, called here) rejects or throws with. Anything else
 * fails the test: resolving, or an error that is not a UmapError.
 */
export async function rejection(run: Promise<unknown> | (() => unknown)): Promise<UmapError> {
  let error: unknown;
  try {
    await (typeof run === "function" ? run() : run);
  } catch (caught) {
    error = caught;
  }
  if (error === undefined) throw new Error("expected a UmapError, but the call succeeded");
  if (!(error instanceof UmapError)) throw new Error(`expected a UmapError, got ${String(error)}`);
  return error;
}

/** The UmapError a function throws synchronously; anything else fails the test. */
export function thrown(run: () => unknown): UmapError {
  try {
    run();
  } catch (error) {
    if (!(error instanceof UmapError)) throw new Error(`expected a UmapError, got ${String(error)}`);
    return error;
  }
  throw new Error("expected a UmapError, nothing was thrown");
}
