/**
 * The store conformance suite: what every store must do behind a region, checked the same way
 * for all of them. A store's test file joins it in a few lines:
 *
 *   storeConformance("FileStore", async () => ({ writable: true, make: ..., reopen: ... }));
 *
 * Data identifies itself (test/helpers.ts: word i holds patternWord(i)), so a misplaced, stale or
 * zero page is named in the failure. The data is not a page multiple, and larger than the page
 * buffer, so every run covers the last partial page, eviction and (writable stores) write-back
 * under eviction. Store objects are closed by the suite; descriptors are closed with the region.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { writeSync } from "node:fs";
import { Worker } from "node:worker_threads";
import { ErrorCode, umap, UmapError, type Region } from "../src/index.ts";
import { isStore, type Store, type StoreDescriptor } from "../src/store.ts";
import { checkPattern, fillPattern, KiB, MiB, patternWord } from "./helpers.ts";

export interface ConformanceSubject {
  /** True if the store can back a writable region. */
  readonly writable: boolean;
  /** A new store holding exactly `data` (data.length bytes), writable if asked (only asked when `writable`). */
  make(data: Uint8Array, options: { writable: boolean }): Promise<Store | StoreDescriptor>;
  /** The store the last make() created, opened afresh (after its region was closed): for the reopen test. */
  reopen(options: { writable: boolean }): Promise<Store | StoreDescriptor>;
}

const PAGE_BYTES = 64 * KiB;
/** Smaller than the data, so reading it all evicts. */
const BUFFER_BYTES = 1 * MiB;
/** Not a page multiple: the last page is partial. */
const DATA_BYTES = 2 * MiB + 1001;
const PAGE_COUNT = Math.ceil(DATA_BYTES / PAGE_BYTES);
const READERS = 4;
const MAP_OPTIONS = { pageSize: PAGE_BYTES, bufferSize: BUFFER_BYTES } as const;

/** The test pattern from byte 0. */
function patternData(byteLength: number): Uint8Array {
  const data = new Uint8Array(byteLength);
  fillPattern(data, 0);
  return data;
}

/** A second generation of data, different in every word, for writes. */
function rewrittenWord(wordIndex: number): number {
  return (patternWord(wordIndex) ^ 0xa5a5_5a5a) >>> 0;
}

/** The first byte where actual and expected differ, named by page and offset; null if equal. */
function firstDifference(actual: Uint8Array, expected: Uint8Array, byteOffset = 0): string | null {
  if (actual.length !== expected.length) return `length ${actual.length}, expected ${expected.length}`;
  if (Buffer.compare(actual, expected) === 0) return null;
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      const at = byteOffset + i;
      return `byte ${at} (page ${Math.floor(at / PAGE_BYTES)}, offset ${at % PAGE_BYTES}): got ${actual[i]}, expected ${expected[i]}`;
    }
  }
  return null;
}

/** Reads a region's bytes page by page into a copy (each page faults as it is copied). */
function readAll(region: Region): Uint8Array {
  const copy = new Uint8Array(region.byteLength);
  for (let offset = 0; offset < region.byteLength; offset += PAGE_BYTES) {
    const length = Math.min(PAGE_BYTES, region.byteLength - offset);
    copy.set(region.view(offset, length), offset);
  }
  return copy;
}

function thrownCode(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return error instanceof UmapError ? error.code : `not a UmapError: ${String(error)}`;
  }
  return "nothing thrown";
}

async function rejectedCode(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
  } catch (error) {
    return error instanceof UmapError ? error.code : `not a UmapError: ${String(error)}`;
  }
  return "nothing thrown";
}

/** Registers the suite under describe(name). `setup` runs in beforeAll; a string result skips the suite, printing that reason. `teardown` runs in afterAll. */
export function storeConformance(
  name: string,
  setup: () => Promise<ConformanceSubject | string>,
  teardown?: () => Promise<void>,
): void {
  describe(name, () => {
    let subject: ConformanceSubject | undefined;
    let skipReason = "setup did not run";

    beforeAll(async () => {
      const result = await setup();
      if (typeof result === "string") {
        skipReason = result;
        writeSync(2, `${name} conformance: skipped: ${result}\n`);
      } else {
        subject = result;
      }
    });
    afterAll(async () => {
      await teardown?.();
    });

    /** The subject, or undefined (with the reason printed) when this test cannot run. */
    function subjectFor(testName: string, needsWritable: boolean): ConformanceSubject | undefined {
      if (!subject) {
        writeSync(2, `${name} conformance: ${testName}: skipped: ${skipReason}\n`);
        return undefined;
      }
      if (needsWritable && !subject.writable) {
        writeSync(2, `${name} conformance: ${testName}: skipped: the store is read-only\n`);
        return undefined;
      }
      return subject;
    }

    /** Maps a store; the returned close() closes the region and then a store object the suite was given. */
    async function mapStore(target: Store | StoreDescriptor, writable: boolean): Promise<{ region: Region; close(): Promise<void> }> {
      const region = await umap(target, { ...MAP_OPTIONS, writable });
      return {
        region,
        async close() {
          await region.close();
          if (isStore(target)) await target.close?.();
        },
      };
    }

    test("round trip: every byte reads back as made, through a buffer smaller than the data", async () => {
      const s = subjectFor("round trip (read)", false);
      if (!s) return;
      const data = patternData(DATA_BYTES);
      const mapped = await mapStore(await s.make(data, { writable: false }), false);
      try {
        const { region } = mapped;
        expect(region.byteLength).toBe(DATA_BYTES);
        expect(firstDifference(readAll(region), data)).toBeNull();
        const stats = region.stats();
        expect(stats.fillErrors).toBe(0);
        expect(stats.evictions).toBeGreaterThan(0);
        expect(stats.residentPages * PAGE_BYTES).toBeLessThanOrEqual(BUFFER_BYTES);
      } finally {
        await mapped.close();
      }
    });

    test("round trip: every word written through a writable region is in the store after close", async () => {
      const s = subjectFor("round trip (write)", true);
      if (!s) return;
      const mapped = await mapStore(await s.make(patternData(DATA_BYTES), { writable: true }), true);
      try {
        const { region } = mapped;
        const wordCount = Math.floor(DATA_BYTES / 4);
        const words = new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, wordCount);
        for (let i = 0; i < wordCount; i++) words[i] = rewrittenWord(i);
        await region.flush();
        // Written once each, in order: every page goes back exactly once (evicted or flushed).
        const stats = region.stats();
        expect(stats.writebacks).toBe(PAGE_COUNT);
        expect(stats.writebackErrors).toBe(0);
      } finally {
        await mapped.close();
      }
      const expected = patternData(DATA_BYTES);
      const view = new DataView(expected.buffer);
      for (let i = 0; i < Math.floor(DATA_BYTES / 4); i++) view.setUint32(i * 4, rewrittenWord(i), true);
      const again = await mapStore(await s.reopen({ writable: false }), false);
      try {
        expect(firstDifference(readAll(again.region), expected)).toBeNull();
      } finally {
        await again.close();
      }
    });

    test("last partial page: the store's tail, zeros past its end, and a write there keeps the size", async () => {
      const s = subjectFor("last partial page", false);
      if (!s) return;
      const lastPageStart = (PAGE_COUNT - 1) * PAGE_BYTES;
      const tailBytes = DATA_BYTES - lastPageStart;
      const writable = s.writable;
      const mapped = await mapStore(await s.make(patternData(DATA_BYTES), { writable }), writable);
      try {
        const { region } = mapped;
        expect(checkPattern(region.view(lastPageStart, tailBytes), lastPageStart, PAGE_BYTES)).toBeNull();
        // Past byteLength the page exists in memory but holds nothing of the store: zeros.
        const wholePage = new Uint8Array(toArrayBuffer((region.address + lastPageStart) as unknown as Pointer, 0, PAGE_BYTES));
        let nonZero = 0;
        for (let i = tailBytes; i < PAGE_BYTES; i++) nonZero += wholePage[i]!;
        expect(nonZero).toBe(0);
        if (writable) {
          region.bytes.fill(0x5c, DATA_BYTES - 7);
          // Bytes written past the end are no part of the store and must not grow it.
          wholePage.fill(0x77, tailBytes);
        }
      } finally {
        await mapped.close();
      }
      if (!writable) return;
      const again = await mapStore(await s.reopen({ writable: false }), false);
      try {
        expect(again.region.byteLength).toBe(DATA_BYTES);
        const expectedTail = patternData(DATA_BYTES).subarray(lastPageStart);
        expectedTail.fill(0x5c, tailBytes - 7);
        expect(firstDifference(again.region.view(lastPageStart, tailBytes), expectedTail, lastPageStart)).toBeNull();
      } finally {
        await again.close();
      }
    });

    test("never-written pages: zero pages read as zeros, and pages a region did not write keep their bytes", async () => {
      const s = subjectFor("never-written pages", false);
      if (!s) return;
      // Data only in the first and last pages: stores that keep zeros sparse get to skip the rest.
      const sparse = new Uint8Array(DATA_BYTES);
      fillPattern(sparse.subarray(0, PAGE_BYTES), 0);
      const lastPageStart = (PAGE_COUNT - 1) * PAGE_BYTES;
      fillPattern(sparse.subarray(lastPageStart), lastPageStart);
      const writable = s.writable;
      const mapped = await mapStore(await s.make(sparse, { writable }), writable);
      const writtenPages = [3, 17];
      try {
        const { region } = mapped;
        expect(firstDifference(readAll(region), sparse)).toBeNull();
        if (writable) {
          for (const page of writtenPages) region.bytes[page * PAGE_BYTES + 11] = 0xee;
          await region.flush();
          // Only the written pages go back to the store: clean pages are dropped, never written.
          expect(region.stats().writebacks).toBe(writtenPages.length);
        }
      } finally {
        await mapped.close();
      }
      if (!writable) return;
      const expected = sparse.slice();
      for (const page of writtenPages) expected[page * PAGE_BYTES + 11] = 0xee;
      const again = await mapStore(await s.reopen({ writable: false }), false);
      try {
        expect(firstDifference(readAll(again.region), expected)).toBeNull();
      } finally {
        await again.close();
      }
    });

    test(`concurrent reads: ${READERS} threads and overlapping prefetches read the right bytes`, async () => {
      const s = subjectFor("concurrent reads", false);
      if (!s) return;
      const mapped = await mapStore(await s.make(patternData(DATA_BYTES), { writable: false }), false);
      try {
        const { region } = mapped;
        const barrier = new Int32Array(new SharedArrayBuffer(4));
        const readBytes = 4 * KiB;
        const results = await Promise.all([
          ...Array.from({ length: READERS }, (_, reader) => {
            // Each reader walks every page from its own starting point, so readers meet on pages.
            const offsets = Array.from({ length: PAGE_COUNT }, (_, i) => ((i + reader * 7) % PAGE_COUNT) * PAGE_BYTES + reader * 997);
            const worker = new Worker(new URL("./fixtures/reader-worker.ts", import.meta.url), {
              workerData: { address: region.address, byteLength: region.byteLength, pageSize: PAGE_BYTES, offsets, readBytes, barrier, readers: READERS },
            });
            return new Promise<{ errors: string[]; checked: number }>((resolve, reject) => {
              worker.once("message", resolve);
              worker.once("error", reject);
            });
          }),
          ...[0, 4, 8, 12].map((page) => region.prefetch(page * PAGE_BYTES, 8 * PAGE_BYTES).then(() => ({ errors: [], checked: 0 }))),
        ]);
        for (const result of results) expect(result.errors).toEqual([]);
        expect(results.slice(0, READERS).map((result) => result.checked)).toEqual(Array(READERS).fill(PAGE_COUNT));
        expect(region.stats().fillErrors).toBe(0);
      } finally {
        await mapped.close();
      }
    });

    test("close-then-use: a closed region refuses its methods, old views read empty, close() again is fine", async () => {
      const s = subjectFor("close-then-use", false);
      if (!s) return;
      const target = await s.make(patternData(DATA_BYTES), { writable: false });
      const region = await umap(target, MAP_OPTIONS);
      const view = region.view(PAGE_BYTES, 16);
      expect(checkPattern(view, PAGE_BYTES, PAGE_BYTES)).toBeNull();
      await region.close();
      await region.close();
      expect(view.length).toBe(0);
      expect(thrownCode(() => region.bytes)).toBe(ErrorCode.CLOSED);
      expect(thrownCode(() => region.view(0, 1))).toBe(ErrorCode.CLOSED);
      expect(thrownCode(() => region.stats())).toBe(ErrorCode.CLOSED);
      expect(await rejectedCode(() => region.prefetch(0, 1))).toBe(ErrorCode.CLOSED);
      expect(await rejectedCode(() => region.flush())).toBe(ErrorCode.CLOSED);
      if (isStore(target)) {
        // A store object outlives the region until its owner closes it; then it refuses reads.
        const bytes = new Uint8Array(16);
        await target.read(PAGE_BYTES, bytes);
        expect(checkPattern(bytes, PAGE_BYTES, PAGE_BYTES)).toBeNull();
        await target.close?.();
        expect(await rejectedCode(async () => target.read(0, bytes))).toBe(ErrorCode.CLOSED);
      }
    });

    test("reopen: what a region wrote is there when the store is opened afresh, read-only and writable", async () => {
      const s = subjectFor("reopen", false);
      if (!s) return;
      const data = patternData(DATA_BYTES);
      const writable = s.writable;
      const first = await mapStore(await s.make(data, { writable }), writable);
      const expected = data.slice();
      try {
        if (writable) {
          first.region.bytes.fill(0x11, 5 * PAGE_BYTES + 3, 6 * PAGE_BYTES + 9); // straddles two pages
          expected.fill(0x11, 5 * PAGE_BYTES + 3, 6 * PAGE_BYTES + 9);
        }
      } finally {
        await first.close();
      }
      const readOnly = await mapStore(await s.reopen({ writable: false }), false);
      try {
        expect(readOnly.region.writable).toBe(false);
        expect(firstDifference(readAll(readOnly.region), expected)).toBeNull();
      } finally {
        await readOnly.close();
      }
      if (!writable) return;
      const second = await mapStore(await s.reopen({ writable: true }), true);
      try {
        second.region.bytes[DATA_BYTES - 1] = 0x22;
        second.region.bytes[0] = 0x33;
        expected[DATA_BYTES - 1] = 0x22;
        expected[0] = 0x33;
      } finally {
        await second.close();
      }
      const last = await mapStore(await s.reopen({ writable: false }), false);
      try {
        expect(firstDifference(readAll(last.region), expected)).toBeNull();
      } finally {
        await last.close();
      }
    });
  });
}
