/**
 * The read path over a matrix of page sizes, in the manner of the kernel's userfaultfd
 * selftests: a 64 MiB file of self-identifying words, whose size is not a page multiple, read
 * back through an 8 MiB buffer sequentially and at random; every byte is checked, resident pages
 * must stay within the buffer, and evicted pages must come back right.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { join } from "node:path";
import { umap } from "../src/index.ts";
import { checkPattern, GiB, KiB, MiB, random, tempDir, writePatternFile } from "./helpers.ts";

const FILE_BYTES = 64 * MiB + 1001; // not a multiple of any page size
const BUFFER_BYTES = 8 * MiB;
const PAGE_SIZES = [4 * KiB, 64 * KiB, 2 * MiB];

const dir = tempDir();
const file = join(dir.path, "pattern.bin");
beforeAll(() => writePatternFile(file, FILE_BYTES));
afterAll(() => dir.remove());

describe.each(PAGE_SIZES)("page size %p", (pageSize) => {
  test("sequential read returns every byte, within the buffer, with evictions", async () => {
    await using region = await umap(file, { pageSize, bufferSize: BUFFER_BYTES });
    expect(region.byteLength).toBe(FILE_BYTES);
    expect(region.pageSize).toBe(pageSize);
    const step = 1 * MiB;
    let maxResidentPages = 0;
    for (let offset = 0; offset < FILE_BYTES; offset += step) {
      const length = Math.min(step, FILE_BYTES - offset);
      expect(checkPattern(region.view(offset, length), offset, pageSize)).toBeNull();
      maxResidentPages = Math.max(maxResidentPages, region.stats().residentPages);
    }
    const stats = region.stats();
    const pageCount = Math.ceil(FILE_BYTES / pageSize);
    expect(maxResidentPages * pageSize).toBeLessThanOrEqual(BUFFER_BYTES);
    expect(stats.evictions).toBeGreaterThan(0);
    expect(stats.fills).toBeGreaterThanOrEqual(pageCount);
    expect(stats.bytesRead).toBe(stats.fills * pageSize);
    expect(stats.fillErrors).toBe(0);
  });

  test("random reads return the right words, including pages evicted and filled again", async () => {
    await using region = await umap(file, { pageSize, bufferSize: BUFFER_BYTES });
    // Misses at 2 MiB pages cost a 2 MiB copy each: bound the bytes filled, not the reads.
    const reads = Math.min(4000, (2 * GiB) / pageSize);
    const next = random(pageSize);
    for (let i = 0; i < reads; i++) {
      const offset = Math.floor(next() * (FILE_BYTES - 64));
      expect(checkPattern(region.view(offset, 64), offset, pageSize)).toBeNull();
    }
    // A second pass over pages that the first pass will mostly have seen evicted.
    const again = random(pageSize);
    for (let i = 0; i < reads / 4; i++) {
      const offset = Math.floor(again() * (FILE_BYTES - 64));
      expect(checkPattern(region.view(offset, 64), offset, pageSize)).toBeNull();
    }
    const stats = region.stats();
    expect(stats.residentPages * pageSize).toBeLessThanOrEqual(BUFFER_BYTES);
    expect(stats.evictions).toBeGreaterThan(0);
  });

  test("the last page reads the file's tail, then zeros past its end", async () => {
    await using region = await umap(file, { pageSize, bufferSize: BUFFER_BYTES });
    const lastPageStart = Math.floor(FILE_BYTES / pageSize) * pageSize;
    const tail = FILE_BYTES - lastPageStart;
    expect(checkPattern(region.view(lastPageStart, tail), lastPageStart, pageSize)).toBeNull();
    // Past byteLength the page exists in memory but is no part of the file: it must be zero.
    const wholePage = new Uint8Array(toArrayBuffer((region.address + lastPageStart) as unknown as Pointer, 0, pageSize));
    let nonZero = 0;
    for (let i = tail; i < pageSize; i++) nonZero += wholePage[i]!;
    expect(nonZero).toBe(0);
  });
});
