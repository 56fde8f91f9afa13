/**
 * The fault engine's behaviours, one test each: exact counters, the shared buffer, concurrent
 * faults on the same pages, the EEXIST race, prefetch, read-ahead, regions beyond 4 GiB, views
 * after close, failed fills, and shutdown.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { defineStore, FileStore, umap, UmapError, type Region } from "../src/index.ts";
import { loadNative } from "../src/native.ts";
import { checkPattern, GiB, KiB, MiB, patternByte, random, tempDir, writePatternFile } from "./helpers.ts";

const PATTERN_STORE = new URL("./fixtures/pattern-store.ts", import.meta.url);
const dir = tempDir();
const file = join(dir.path, "pattern.bin");
const FILE_BYTES = 16 * MiB;
beforeAll(() => writePatternFile(file, FILE_BYTES));
afterAll(() => dir.remove());

/** Reads one byte of each page given, consuming the values so the JIT cannot drop the reads. */
function touch(region: Region, pages: Iterable<number>): void {
  const bytes = region.bytes;
  let sum = 0;
  for (const page of pages) {
    const offset = page * region.pageSize;
    const value = bytes[offset]!;
    if (value !== patternByte(offset)) throw new Error(`page ${page}: got ${value}, expected ${patternByte(offset)}`);
    sum += value;
  }
  expect(sum).toBeGreaterThanOrEqual(0);
}

describe("counters", () => {
  test("with an ample buffer and no read-ahead, fills == faults == distinct pages touched", async () => {
    await using region = await umap(file, { pageSize: 4 * KiB, bufferSize: 32 * MiB, readAhead: 0 });
    const next = random(7);
    const pages = new Set<number>();
    for (let i = 0; i < 500; i++) pages.add(Math.floor(next() * (FILE_BYTES / region.pageSize)));
    touch(region, pages);
    touch(region, pages); // a second pass faults on nothing
    const stats = region.stats();
    expect(stats.fills).toBe(pages.size);
    expect(stats.faults).toBe(pages.size);
    expect(stats.fillRequests).toBe(pages.size);
    expect(stats.readAheadPages).toBe(0);
    expect(stats.evictions).toBe(0);
    expect(stats.residentPages).toBe(pages.size);
    expect(stats.bytesRead).toBe(pages.size * region.pageSize);
  });

  test("fixed read-ahead fills the pages after each fault in the same request", async () => {
    await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 32 * MiB, readAhead: 3 });
    touch(region, [0, 1, 2, 3]);
    const stats = region.stats();
    expect(stats.faults).toBe(1);
    expect(stats.fills).toBe(4);
    expect(stats.readAheadPages).toBe(3);
    touch(region, [10]);
    expect(region.stats().fills).toBe(8);
  });

  test("adaptive read-ahead grows on a sequential scan, so it faults on few pages", async () => {
    await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 8 * MiB });
    const pageCount = FILE_BYTES / region.pageSize;
    touch(region, Array.from({ length: pageCount }, (_, page) => page));
    const stats = region.stats();
    expect(stats.fills).toBeGreaterThanOrEqual(pageCount);
    expect(stats.readAheadPages).toBeGreaterThan(pageCount / 2);
    expect(stats.faults).toBeLessThan(pageCount / 4);
  });

  test("counters never lag the memory: a scan that outruns its read-ahead sees every page it read counted", async () => {
    // Read-ahead pages are readable the moment they are installed, before any thread is woken:
    // a reader can finish a scan while the last batch's worker has yet to record it.
    for (let round = 0; round < 20; round++) {
      await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 8 * MiB });
      const pageCount = FILE_BYTES / region.pageSize;
      touch(region, Array.from({ length: pageCount }, (_, page) => page));
      const stats = region.stats();
      expect(stats.fills).toBeGreaterThanOrEqual(pageCount);
      expect(stats.bytesRead).toBe(stats.fills * region.pageSize);
    }
  });
});

describe("the page buffer", () => {
  test("regions share one buffer: together they stay within it, and read right", async () => {
    const bufferSize = 2 * MiB;
    await using a = await umap(file, { pageSize: 64 * KiB, bufferSize, readAhead: 0 });
    await using b = await umap(file, { pageSize: 4 * KiB, bufferSize, readAhead: 0 });
    const next = random(11);
    for (let i = 0; i < 3000; i++) {
      const region = i % 2 ? a : b;
      const offset = Math.floor(next() * (FILE_BYTES - 16));
      expect(checkPattern(region.view(offset, 16), offset, region.pageSize)).toBeNull();
      if (i % 100 === 0) {
        const resident = a.stats().residentPages * a.pageSize + b.stats().residentPages * b.pageSize;
        expect(resident).toBeLessThanOrEqual(bufferSize);
      }
    }
    expect(a.stats().evictions + b.stats().evictions).toBeGreaterThan(0);
    expect(loadNative().native.umap_engine_resident_bytes()).toBeLessThanOrEqual(bufferSize);
  });

  test("with the buffer at a single page, every fault evicts the page before it", async () => {
    await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 64 * KiB, readAhead: 0 });
    touch(region, [0, 5, 0, 9, 5]);
    const stats = region.stats();
    expect(stats.fills).toBe(5);
    expect(stats.evictions).toBe(4);
    expect(stats.residentPages).toBe(1);
  });

  test("an evicted page is filled again with the right bytes", async () => {
    await using region = await umap(file, { pageSize: 4 * KiB, bufferSize: 64 * KiB, readAhead: 0 });
    touch(region, Array.from({ length: 64 }, (_, page) => page)); // 4x the buffer
    expect(region.stats().evictions).toBeGreaterThanOrEqual(48);
    touch(region, [0, 1, 2]);
    expect(checkPattern(region.view(0, 3 * 4096), 0, 4096)).toBeNull();
  });
});

describe("concurrency", () => {
  async function readFromWorkers(region: Region, readers: number, offsets: number[], readBytes: number) {
    const barrier = new Int32Array(new SharedArrayBuffer(4));
    const results = await Promise.all(
      Array.from({ length: readers }, () => {
        const worker = new Worker(new URL("./fixtures/reader-worker.ts", import.meta.url), {
          workerData: {
            address: region.address,
            byteLength: region.byteLength,
            pageSize: region.pageSize,
            offsets,
            readBytes,
            barrier,
            readers,
          },
        });
        return new Promise<{ errors: string[]; checked: number }>((resolve, reject) => {
          worker.once("message", resolve);
          worker.once("error", reject);
        });
      }),
    );
    return results;
  }

  test("several threads faulting the same page at once: one fill, the others wait on it", async () => {
    // A slow store keeps the page FILLING long enough for every reader's fault to arrive.
    const store = defineStore(PATTERN_STORE, { size: FILE_BYTES, delayMs: 200 });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 4 * MiB, readAhead: 0 });
    const results = await readFromWorkers(region, 4, [0], 64);
    for (const result of results) expect(result.errors).toEqual([]);
    const stats = region.stats();
    expect(stats.fills).toBe(1);
    expect(stats.faults).toBeGreaterThanOrEqual(2);
    expect(stats.duplicateFaults).toBe(stats.faults - 1);
  });

  test("several threads reading many pages at random through a small buffer all read right", async () => {
    await using region = await umap(file, { pageSize: 4 * KiB, bufferSize: 1 * MiB, fillers: 3 });
    const next = random(5);
    const offsets = Array.from({ length: 2000 }, () => Math.floor(next() * (FILE_BYTES - 256)));
    const results = await readFromWorkers(region, 4, offsets, 256);
    for (const result of results) {
      expect(result.errors).toEqual([]);
      expect(result.checked).toBe(offsets.length);
    }
    expect(region.stats().residentPages * region.pageSize).toBeLessThanOrEqual(1 * MiB);
  });

  test("EEXIST: a fill that finds its page already installed counts the race and wakes", async () => {
    await using region = await umap(file, { pageSize: 4 * KiB, bufferSize: 1 * MiB, readAhead: 0 });
    const { native } = loadNative();
    // Another installation wins: a zero page appears behind the engine's back.
    expect(native.umap_test_preinstall_zero_page(region.slot, 3)).toBe(0);
    await region.prefetch(3 * 4096, 4096);
    const stats = region.stats();
    expect(stats.copyRaces).toBe(1);
    expect(stats.fills).toBe(1);
    // The winner's bytes stay: no second copy overwrote them, and nothing hangs.
    expect(region.bytes[3 * 4096 + 1]).toBe(0);
  });
});

describe("prefetch", () => {
  test("resolves once the range is resident: reading it then faults on nothing", async () => {
    await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 8 * MiB, readAhead: 0 });
    await region.prefetch(1 * MiB + 100, 2 * MiB);
    const before = region.stats();
    expect(before.prefetchPages).toBe(33); // 2 MiB starting 100 bytes into a page spans 33 pages
    expect(before.fills).toBe(33);
    expect(checkPattern(region.view(1 * MiB + 100, 2 * MiB), 1 * MiB + 100, region.pageSize)).toBeNull();
    expect(region.stats().faults).toBe(0);
  });

  test("works with asynchronous stores", async () => {
    const store = defineStore(PATTERN_STORE, { size: 4 * MiB, async: true, delayMs: 2 });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 8 * MiB });
    await region.prefetch(0, 4 * MiB);
    expect(checkPattern(region.bytes, 0, region.pageSize)).toBeNull();
    expect(region.stats().faults).toBe(0);
  });

  test("rejects with ERR_UMAP_STORE when the store fails, and the pages can be read once it recovers", async () => {
    const store = defineStore(PATTERN_STORE, { size: 4 * MiB, failFrom: 1 * MiB, failTo: 1 * MiB + 1 });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 8 * MiB });
    const error = await region.prefetch(0, 2 * MiB).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UmapError);
    expect((error as UmapError).code).toBe("ERR_UMAP_STORE");
    expect((error as UmapError).message).toContain("injected failure at byte 1048576");
    // The store's own error is the cause, as for every error of the library.
    expect((error as UmapError).cause).toBeInstanceOf(Error);
    expect(((error as UmapError).cause as Error).message).toContain("injected failure at byte 1048576");
    expect(region.stats().fillErrors).toBe(1);
    expect(region.stats().poisonedPages).toBe(0);
    // Pages outside the failing range are fine.
    expect(checkPattern(region.view(0, 64 * KiB), 0, region.pageSize)).toBeNull();
  });

  test("refuses a range larger than the buffer can hold at once", async () => {
    await using region = await umap(file, { pageSize: 64 * KiB, bufferSize: 1 * MiB });
    expect(() => region.prefetch(0, 4 * MiB)).toThrow(/low-water mark/);
  });
});

describe("large regions", () => {
  test("a region over 4 GiB is read through view(); bytes says to use it", async () => {
    const size = 5 * GiB + 123;
    const store = defineStore(PATTERN_STORE, { size });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 4 * MiB });
    expect(region.byteLength).toBe(size);
    expect(() => region.bytes).toThrow(/use view/);
    for (const offset of [0, 4 * GiB - 10, 4 * GiB + 7, 5 * GiB, size - 50]) {
      expect(checkPattern(region.view(offset, 50), offset, region.pageSize)).toBeNull();
    }
  });
});

describe("close", () => {
  test("detaches every view: a view kept past close() reads as empty instead of crashing", async () => {
    const region = await umap(file, { pageSize: 4 * KiB, bufferSize: 1 * MiB });
    const whole = region.bytes;
    const part = region.view(100, 10);
    expect(part[0]).toBe(patternByte(100));
    await region.close();
    expect(whole.length).toBe(0);
    expect(part.length).toBe(0);
    expect(part[0]).toBeUndefined();
    await region.close(); // idempotent
  });

  test("regions can be opened and closed many times, engine restarts included", async () => {
    for (let i = 0; i < 20; i++) {
      const region = await umap(file, { pageSize: 4 * KiB, bufferSize: 1 * MiB });
      expect(region.bytes[i * 4096 + 1]).toBe(patternByte(i * 4096 + 1));
      await region.close();
    }
  });
});

describe("failed fills", () => {
  test('onFillError: "zero": the access reads zeros, region.errors() names the range and the error, the rest reads right', async () => {
    const store = defineStore(PATTERN_STORE, { size: 1 * MiB, failFrom: 65536, failTo: 65537 });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 1 * MiB, readAhead: 0, onFillError: "zero" });
    expect(region.errors()).toEqual([]);
    const page = region.view(65536, 65536);
    expect(page.every((byte) => byte === 0)).toBe(true);
    expect(checkPattern(region.view(0, 65536), 0, 65536)).toBeNull();
    expect(checkPattern(region.view(2 * 65536, 65536), 2 * 65536, 65536)).toBeNull();
    const stats = region.stats();
    expect(stats.zeroedPages).toBe(1);
    expect(stats.poisonedPages).toBe(0);
    expect(stats.fillErrors).toBe(1);
    const errors = region.errors();
    expect(errors).toHaveLength(1);
    expect(errors[0]!.byteOffset).toBe(65536);
    expect(errors[0]!.byteLength).toBe(65536);
    expect(errors[0]!.answer).toBe("zero");
    expect(errors[0]!.message).toContain("injected failure");
  });

  test("region.errors() keeps the latest 64 failed fills; stats() counts them all", async () => {
    const store = defineStore(PATTERN_STORE, { size: 8 * MiB, failFrom: 0, failTo: 8 * MiB });
    await using region = await umap(store, { pageSize: 4 * KiB, bufferSize: 1 * MiB, readAhead: 0, onFillError: "zero" });
    let sum = 0;
    for (let page = 0; page < 100; page++) sum += region.bytes[page * 4096]!;
    expect(sum).toBe(0);
    expect(region.stats().fillErrors).toBe(100);
    const errors = region.errors();
    expect(errors).toHaveLength(64);
    expect(errors[0]!.byteOffset).toBe(36 * 4096);
    expect(errors[63]!.byteOffset).toBe(99 * 4096);
  });

  test('onFillError must be "sigbus" or "zero"', async () => {
    const error = await umap(file, { onFillError: "ignore" as "zero" }).catch((e: unknown) => e);
    expect((error as UmapError).code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect((error as UmapError).message).toContain("onFillError");
  });
});

describe("worker deaths", () => {
  const DYING_STORE = new URL("./fixtures/dying-store.ts", import.meta.url);

  test("a worker whose store ends its thread is replaced, and the request it held is filled by another", async () => {
    const native = loadNative().native;
    const marker = join(dir.path, "died-once");
    const store = defineStore(DYING_STORE, { size: 4 * MiB, dieOnce: marker });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 8 * MiB, readAhead: 0, fillers: 2 });
    const deathsBefore = native.umap_engine_worker_deaths();
    expect(checkPattern(region.view(3 * 65536, 65536), 3 * 65536, 65536)).toBeNull();
    expect(native.umap_engine_worker_deaths()).toBe(deathsBefore + 1);
    // A replacement registers once the main thread has run.
    for (let waitedMs = 0; native.umap_engine_workers(0) < 2 && waitedMs < 10_000; waitedMs += 10) await Bun.sleep(10);
    expect(native.umap_engine_workers(0)).toBe(2);
    // The replacement serves too: the whole region reads right with both fillers busy.
    expect(checkPattern(region.view(0, 4 * MiB), 0, 65536)).toBeNull();
    await region.prefetch(0, 1 * MiB);
    const stats = region.stats();
    expect(stats.fillErrors).toBe(0);
    expect(stats.fills).toBe(64);
  });

  test("a request that kills every worker it meets is failed after three, not handed on forever", async () => {
    const store = defineStore(DYING_STORE, { size: 1 * MiB, dieAlways: true });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 4 * MiB, readAhead: 0, fillers: 2, onFillError: "zero" });
    expect(region.bytes[70_000]).toBe(0);
    const errors = region.errors();
    expect(errors.length).toBe(1);
    expect(errors[0]!.byteOffset).toBe(65536);
    expect(errors[0]!.message).toMatch(/died|no fill worker is left/);
    const failed = await region.prefetch(0, 65536).catch((e: unknown) => e);
    expect((failed as UmapError).code).toBe("ERR_UMAP_STORE");
  });
});

describe("limits", () => {
  test("a thousand regions open at once map and read right (LLNL UMap failed at about 900)", async () => {
    const regions: Region[] = [];
    try {
      for (let i = 0; i < 1000; i++) {
        const byteOffset = (i * 64 * KiB) % FILE_BYTES;
        regions.push(await umap(new FileStore(file, { offset: byteOffset, length: 64 * KiB }), { pageSize: 4 * KiB, bufferSize: 8 * MiB }));
      }
      let wrong = 0;
      regions.forEach((region, i) => {
        const byteOffset = (i * 64 * KiB) % FILE_BYTES;
        const at = (i * 4 * KiB + 8) % (64 * KiB);
        wrong += region.bytes[at] === patternByte(byteOffset + at) ? 0 : 1;
      });
      expect(wrong).toBe(0);
      const resident = regions.reduce((sum, region) => sum + region.stats().residentPages * region.pageSize, 0);
      expect(resident).toBeLessThanOrEqual(8 * MiB);
    } finally {
      await Promise.all(regions.map((region) => region.close()));
    }
  });

  test("past 4096 regions at once, umap() is refused with ERR_UMAP_UNSUPPORTED naming the limit", async () => {
    const store = defineStore(PATTERN_STORE, { size: 4 * KiB });
    const regions: Region[] = [];
    try {
      for (let i = 0; i < 4096; i++) regions.push(await umap(store, { pageSize: 4 * KiB, bufferSize: 8 * MiB }));
      const error = await umap(store, { pageSize: 4 * KiB }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UmapError);
      expect((error as UmapError).code).toBe("ERR_UMAP_UNSUPPORTED");
      expect((error as UmapError).message).toContain("4096");
    } finally {
      await Promise.all(regions.map((region) => region.close()));
    }
    // The slots are free again.
    await using again = await umap(store, { pageSize: 4 * KiB });
    expect(again.bytes[5]).toBe(patternByte(5));
  });
});

describe("in a child process", () => {
  const run = (script: string, env: Record<string, string> = {}) =>
    Bun.spawnSync([process.execPath, "-e", script], {
      cwd: join(import.meta.dir, ".."),
      env: { ...process.env, ...env },
      stderr: "pipe",
      stdout: "pipe",
      timeout: 30_000,
    });

  test("a script that never closes its region still exits on its own", () => {
    const result = run(`
      import { umap } from "./src/index.ts";
      const region = await umap(${JSON.stringify(file)}, { bufferSize: 1 << 20 });
      console.log(region.bytes[4097]);
    `);
    expect(result.exitCode).toBe(0);
    expect(result.stdout.toString().trim()).toBe(String(patternByte(4097)));
  });

  test("a fill that fails for good: the access gets SIGBUS and stderr names region, offset and error", () => {
    const result = run(`
      import { umap, defineStore } from "./src/index.ts";
      const store = defineStore(${JSON.stringify(PATTERN_STORE.href)}, { size: 1 << 20, failFrom: 65536, failTo: 65537 });
      const region = await umap(store, { pageSize: 65536, bufferSize: 1 << 20, readAhead: 0 });
      console.log("before", region.bytes[0]);
      console.log("after", region.bytes[65536 + 5]);
    `);
    expect(result.signalCode).toBe("SIGBUS");
    expect(result.stdout.toString()).toContain(`before ${patternByte(0)}`);
    expect(result.stdout.toString()).not.toContain("after");
    const stderr = result.stderr.toString();
    expect(stderr).toContain("bun-umap: cannot fill file://");
    expect(stderr).toContain("pattern-store.ts at byte offset 65536");
    expect(stderr).toContain("injected failure");
    expect(stderr).toContain("SIGBUS");
  });

  test("without UFFDIO_POISON, a failed fill reads as zeros and says so on stderr, never silently", () => {
    const result = run(
      `
      import { umap, defineStore } from "./src/index.ts";
      const store = defineStore(${JSON.stringify(PATTERN_STORE.href)}, { size: 1 << 20, failFrom: 65536, failTo: 65537 });
      const region = await umap(store, { pageSize: 65536, bufferSize: 1 << 20, readAhead: 0 });
      const value = region.bytes[65536 + 5];
      console.log("value", value, "zeroed", region.stats().zeroedPages);
      await region.close();
    `,
      { BUN_UMAP_MASK_FEATURES: String(1 << 14) },
    );
    expect(result.exitCode).toBe(0);
    expect(result.stdout.toString()).toContain("value 0 zeroed 1");
    expect(result.stderr.toString()).toContain("reads zeros (this kernel has no UFFDIO_POISON");
  });
});
