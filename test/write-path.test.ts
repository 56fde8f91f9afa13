/**
 * The write path: dirty tracking by write-protect faults, write-back on eviction, flush() and
 * close(), the races LLNL UMap lost writes on, store write failures, and the ports of UMap's
 * churn test and umapsort.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { defineStore, FileStore, umap, UmapError } from "../src/index.ts";
import { checkPattern, KiB, MiB, patternWord, random, tempDir, writePatternFile } from "./helpers.ts";
import { sortU64InPlace } from "./fixtures/sort-u64.ts";

const FLAKY_STORE = new URL("./fixtures/flaky-file-store.ts", import.meta.url);
const PATTERN_STORE = new URL("./fixtures/pattern-store.ts", import.meta.url);
const dir = tempDir();
afterAll(() => dir.remove());
let fileCount = 0;

/** A new file of the test pattern. */
function patternFile(byteLength: number): string {
  const path = join(dir.path, `data-${fileCount++}.bin`);
  writePatternFile(path, byteLength);
  return path;
}

function fileWords(path: string): Uint32Array {
  const bytes = readFileSync(path);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 4));
}

describe.each([4 * KiB, 64 * KiB, 2 * MiB])("page size %p", (pageSize) => {
  test("32 MiB written through a 4 MiB buffer is in the file after flush(), sparse writes after close()", async () => {
    const size = 32 * MiB;
    const path = patternFile(size);
    const region = await umap(path, { writable: true, pageSize, bufferSize: 4 * MiB });
    const words = new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, size / 4);
    for (let i = 0; i < words.length; i++) words[i] = (i * 2654435761) >>> 0;
    await region.flush();
    const afterFlush = region.stats();
    expect(afterFlush.writebacks).toBe(size / pageSize);
    expect(afterFlush.bytesWritten).toBe(size);
    expect(afterFlush.evictions).toBeGreaterThan(0);
    expect(afterFlush.residentPages * pageSize).toBeLessThanOrEqual(4 * MiB);
    const file = fileWords(path);
    let wrong = 0;
    for (let i = 0; i < file.length; i++) wrong += file[i] !== (i * 2654435761) >>> 0 ? 1 : 0;
    expect(wrong).toBe(0);

    // Sparse writes: only their pages are written back.
    const sparse = [5, size / 2 + 3, size - 1];
    for (const offset of sparse) region.bytes[offset] = 0xab;
    await region.close();
    const bytes = readFileSync(path);
    for (const offset of sparse) expect(bytes[offset]).toBe(0xab);
    expect(bytes.length).toBe(size);
  });
});

test("three writable regions sharing one buffer, written in turns, each holds its own writes", async () => {
  const size = 8 * MiB;
  const paths = [patternFile(size), patternFile(size), patternFile(size)];
  const regions = await Promise.all(paths.map((path) => umap(path, { writable: true, pageSize: 64 * KiB, bufferSize: 4 * MiB })));
  const words = regions.map((region) => new Uint32Array(region.bytes.buffer, 0, size / 4));
  // Interleaved, so every region's pages evict the others'.
  for (let i = 0; i < size / 4; i += 7) {
    for (let r = 0; r < regions.length; r++) words[r]![i] = (i ^ (r << 28)) >>> 0;
  }
  await Promise.all(regions.map((region) => region.flush()));
  expect(regions.reduce((sum, region) => sum + region.stats().residentPages, 0) * 64 * KiB).toBeLessThanOrEqual(4 * MiB);
  for (const region of regions) expect(region.stats().evictions).toBeGreaterThan(0);
  await Promise.all(regions.map((region) => region.close()));
  paths.forEach((path, r) => {
    const file = fileWords(path);
    let wrong = 0;
    for (let i = 0; i < file.length; i++) wrong += file[i] !== (i % 7 === 0 ? (i ^ (r << 28)) >>> 0 : patternWord(i)) ? 1 : 0;
    expect(`region ${r}: ${wrong} wrong words`).toBe(`region ${r}: 0 wrong words`);
  });
});

test("only dirty pages are written back; clean ones are dropped", async () => {
  const path = patternFile(8 * MiB);
  await using region = await umap(path, { writable: true, pageSize: 64 * KiB, bufferSize: 1 * MiB, readAhead: 0 });
  let sum = 0;
  for (let offset = 0; offset < 8 * MiB; offset += 64 * KiB) sum += region.bytes[offset]!; // read every page
  region.bytes[3 * 64 * KiB + 1] = 1;
  region.bytes[100 * 64 * KiB + 2] = 2;
  await region.flush();
  const stats = region.stats();
  expect(sum).toBeGreaterThan(0);
  expect(stats.writebacks).toBe(2);
  expect(stats.writeFaults).toBe(2);
  expect(stats.evictions).toBeGreaterThan(100);
});

test("a file whose size is not a page multiple keeps its size; its last page is written back", async () => {
  const size = 1 * MiB + 77;
  const path = patternFile(size);
  const region = await umap(path, { writable: true, pageSize: 64 * KiB, bufferSize: 1 * MiB });
  region.bytes[size - 1] = 0x5a;
  await region.close();
  const bytes = readFileSync(path);
  expect(bytes.length).toBe(size);
  expect(bytes[size - 1]).toBe(0x5a);
  expect(checkPattern(bytes.subarray(0, size - 1), 0, 64 * KiB)).toBeNull();
});

describe("races", () => {
  test("a page faulted while its write-back is in flight is served from the in-flight copy", async () => {
    const path = patternFile(1 * MiB);
    const store = defineStore(FLAKY_STORE, { path, writable: true, writeDelayMs: 300 });
    // Two pages of buffer: touching a second page evicts the first (the high-water mark is 90%).
    await using region = await umap(store, { writable: true, pageSize: 64 * KiB, bufferSize: 128 * KiB, readAhead: 0, evictors: 1 });
    region.bytes[10] = 0x11; // page 0 dirty
    expect(region.bytes[64 * KiB]).toBe(checkPatternByte(64 * KiB)); // evicts page 0: its slow write-back starts
    expect(region.stats().evictions).toBe(1);
    // The store still has the old byte; the mapping must show the new one.
    expect(region.bytes[10]).toBe(0x11);
    expect(region.stats().writebackServes).toBe(1);
    // A write that lands while the first write-back is still running stays dirty.
    region.bytes[11] = 0x22;
    await region.flush();
    const bytes = readFileSync(path);
    expect(bytes[10]).toBe(0x11);
    expect(bytes[11]).toBe(0x22);
  });

  test("writes during flush() are not lost: they are written by the next flush", async () => {
    const path = patternFile(4 * MiB);
    const store = defineStore(FLAKY_STORE, { path, writable: true, writeDelayMs: 5 });
    await using region = await umap(store, { writable: true, pageSize: 64 * KiB, bufferSize: 8 * MiB });
    const words = new Uint32Array(region.bytes.buffer, 0, (4 * MiB) / 4);
    for (let i = 0; i < words.length; i += 1024) words[i] = 1;
    const flushing = region.flush();
    // While the slow write-backs run, write every page again.
    for (let i = 0; i < words.length; i += 1024) words[i] = 2;
    await flushing;
    await region.flush();
    const file = fileWords(path);
    for (let i = 0; i < file.length; i += 1024) expect(file[i]).toBe(2);
  });
});

describe("store failures", () => {
  test("flush() rejects with ERR_UMAP_STORE, the pages stay dirty, and a later flush() succeeds", async () => {
    const path = patternFile(1 * MiB);
    const flag = join(dir.path, "fail-writes");
    writeFileSync(flag, "");
    const store = defineStore(FLAKY_STORE, { path, writable: true, failWhileExists: flag });
    const region = await umap(store, { writable: true, pageSize: 64 * KiB, bufferSize: 1 * MiB });
    region.bytes[100] = 0x42;
    const error = await region.flush().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UmapError);
    expect((error as UmapError).code).toBe("ERR_UMAP_STORE");
    expect((error as UmapError).message).toContain("injected write failure at byte 0");
    expect((error as UmapError).cause).toBeInstanceOf(Error);
    expect(region.stats().writebackErrors).toBeGreaterThanOrEqual(1);
    // close() refuses to drop the dirty page: it rejects and the region stays open.
    expect(region.close()).rejects.toThrow(/injected write failure/);
    await Bun.sleep(20);
    expect(region.bytes[100]).toBe(0x42);
    rmSync(flag);
    await region.flush();
    expect(readFileSync(path)[100]).toBe(0x42);
    await region.close();
  });
});

describe("refusals", () => {
  test("read-only stores refuse writable: true with ERR_UMAP_UNSUPPORTED", async () => {
    const path = patternFile(64 * KiB);
    const readOnly = new FileStore(path);
    const error = await umap(readOnly, { writable: true }).catch((e: unknown) => e);
    expect((error as UmapError).code).toBe("ERR_UMAP_UNSUPPORTED");
    expect((error as UmapError).message).toContain("read-only");
    readOnly.close();
    const pattern = defineStore(PATTERN_STORE, { size: 4096 });
    const error2 = await umap(pattern, { writable: true }).catch((e: unknown) => e);
    expect((error2 as UmapError).code).toBe("ERR_UMAP_UNSUPPORTED");
  });

  test("a read-only region ignores nothing: writes to it are not possible to persist, flush() has nothing to do", async () => {
    const path = patternFile(64 * KiB);
    await using region = await umap(path);
    expect(region.writable).toBe(false);
    await region.flush();
    expect(region.stats().writebacks).toBe(0);
  });
});

describe("ports of UMap's tests", () => {
  test("churn: load, read-write and churn pages on one region, several threads, a small buffer", async () => {
    const pageSize = 4 * KiB;
    const loadPages = 512, rwPages = 256, churnPages = 1024;
    const pageCount = loadPages + rwPages + churnPages;
    const path = patternFile(pageCount * pageSize);
    const region = await umap(path, { writable: true, pageSize, bufferSize: (pageCount * pageSize) / 8, fillers: 2, evictors: 2 });
    const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);
    const rw = range(loadPages, rwPages);
    const generations = 4;
    const threads = [
      { kind: "load", pages: range(0, loadPages), seed: 1 },
      { kind: "load", pages: range(0, loadPages), seed: 2 },
      { kind: "rw", pages: rw.filter((p) => p % 2 === 0), seed: 3 },
      { kind: "rw", pages: rw.filter((p) => p % 2 === 1), seed: 4 },
      { kind: "churn", pages: range(loadPages + rwPages, churnPages), seed: 5 },
    ];
    const results = await Promise.all(
      threads.map(
        (thread) =>
          new Promise<{ errors: string[] }>((resolve, reject) => {
            const worker = new Worker(new URL("./fixtures/churn-worker.ts", import.meta.url), {
              workerData: { ...thread, address: region.address, byteLength: region.byteLength, pageSize, generations, reads: 20000 },
            });
            worker.once("message", resolve);
            worker.once("error", reject);
          }),
      ),
    );
    for (const result of results) expect(result.errors).toEqual([]);
    const stats = region.stats();
    expect(stats.evictions).toBeGreaterThan(0);
    expect(stats.writebacks).toBeGreaterThan(0);
    await region.close();

    const file = fileWords(path);
    const wordsPerPage = pageSize / 4;
    let wrong = 0;
    for (let page = 0; page < pageCount; page++) {
      for (let word = 0; word < wordsPerPage; word++) {
        const index = page * wordsPerPage + word;
        const isRw = page >= loadPages && page < loadPages + rwPages && word % 97 === 0;
        const expected = isRw ? ((page << 12) ^ (word << 20) ^ generations) >>> 0 : patternWord(index);
        if (file[index] !== expected) wrong++;
      }
    }
    expect(wrong).toBe(0);
  });

  test("umapsort: a u64 array four times the buffer, sorted in place, sorted in the file after close()", async () => {
    const count = (16 * MiB) / 8;
    const path = join(dir.path, "sort.bin");
    const next = random(42);
    const values = new BigUint64Array(count);
    let xor = 0n;
    for (let i = 0; i < count; i++) {
      values[i] = (BigInt(Math.floor(next() * 2 ** 32)) << 32n) | BigInt(Math.floor(next() * 2 ** 32));
      xor ^= values[i]!;
    }
    writeFileSync(path, values);
    const region = await umap(path, { writable: true, pageSize: 64 * KiB, bufferSize: 4 * MiB });
    sortU64InPlace(new Uint32Array(region.bytes.buffer, 0, count * 2));
    const mapped = new BigUint64Array(region.bytes.buffer, 0, count);
    let unsorted = 0;
    for (let i = 1; i < count; i++) unsorted += mapped[i - 1]! > mapped[i]! ? 1 : 0;
    expect(unsorted).toBe(0);
    expect(region.stats().evictions).toBeGreaterThan(0);
    await region.close();
    const bytes = readFileSync(path);
    const file = new BigUint64Array(bytes.buffer, bytes.byteOffset, count);
    let fileXor = 0n;
    unsorted = 0;
    for (let i = 0; i < count; i++) {
      fileXor ^= file[i]!;
      if (i > 0 && file[i - 1]! > file[i]!) unsorted++;
    }
    expect(unsorted).toBe(0);
    expect(fileXor).toBe(xor); // the same values, not just sorted ones
  });
  test("a 16 MiB u64 array sorted with TypedArray.prototype.sort through a 2 MiB buffer is sorted in the file", async () => {
    // JavaScriptCore's sort of 64-bit integers keeps about 256 places in the array busy at once
    // (measured; as a radix sort's buckets), so those 256 pages must fit in the buffer together:
    // 4 KiB pages do (1 MiB), 64 KiB pages would need 16 MiB and thrash.
    const count = (16 * MiB) / 8;
    const path = join(dir.path, "typed-sort.bin");
    const next = random(7);
    const values = new BigUint64Array(count);
    for (let i = 0; i < count; i++) values[i] = (BigInt(Math.floor(next() * 2 ** 32)) << 32n) | BigInt(Math.floor(next() * 2 ** 32));
    writeFileSync(path, values);
    const expected = values.slice().sort();
    const region = await umap(path, { writable: true, pageSize: 4 * KiB, bufferSize: 2 * MiB });
    new BigUint64Array(region.bytes.buffer, 0, count).sort();
    expect(region.stats().writebacks).toBeGreaterThan(0);
    await region.close();
    const bytes = readFileSync(path);
    expect(Buffer.compare(bytes, Buffer.from(expected.buffer))).toBe(0);
  });
});

describe("in a child process", () => {
  const run = (script: string, env: Record<string, string> = {}) =>
    Bun.spawn([process.execPath, "-e", script], {
      cwd: join(import.meta.dir, ".."),
      env: { ...process.env, ...env },
      stdout: "pipe",
      stderr: "pipe",
    });

  test("a child killed with SIGKILL right after flush() resolved leaves the flushed data in the file", async () => {
    const path = patternFile(8 * MiB);
    const child = run(`
      import { umap } from "./src/index.ts";
      const region = await umap(${JSON.stringify(path)}, { writable: true, bufferSize: 1 << 20 });
      const words = new Uint32Array(region.bytes.buffer, 0, region.byteLength / 4);
      for (let i = 0; i < words.length; i++) words[i] = i ^ 0x5a5a5a5a;
      await region.flush();
      console.log("flushed");
      for (let i = 0; i < words.length; i++) words[i] = 0; // never flushed: may or may not land
      await Bun.sleep(60_000);
    `);
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value)).toContain("flushed");
    child.kill("SIGKILL");
    await child.exited;
    expect(child.signalCode).toBe("SIGKILL");
    const file = fileWords(path);
    let wrong = 0;
    for (let i = 0; i < file.length; i++) wrong += file[i] !== ((i ^ 0x5a5a5a5a) >>> 0) && file[i] !== 0 ? 1 : 0;
    expect(wrong).toBe(0);
    // The flushed generation is what the file holds wherever the later writes did not land.
    expect(file[1]).toBeOneOf([(1 ^ 0x5a5a5a5a) >>> 0, 0]);
  });

  test("a script that writes and ends without close() exits on its own and leaves its writes in the file", async () => {
    const path = patternFile(4 * MiB);
    const child = run(`
      import { umap } from "./src/index.ts";
      const region = await umap(${JSON.stringify(path)}, { writable: true, bufferSize: 1 << 20 });
      for (let offset = 0; offset < region.byteLength; offset += 4096) region.bytes[offset] = 7;
    `);
    const exitCode = await Promise.race([child.exited, Bun.sleep(30_000).then(() => "hung")]);
    expect(exitCode).toBe(0);
    const bytes = readFileSync(path);
    for (let offset = 0; offset < bytes.length; offset += 4096) expect(bytes[offset]).toBe(7);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} with dirty pages and no handler of the script's own: the pages are flushed, then the signal ends the process`, async () => {
      const path = patternFile(4 * MiB);
      const child = run(`
        import { umap } from "./src/index.ts";
        const region = await umap(${JSON.stringify(path)}, { writable: true, bufferSize: 1 << 20 });
        for (let offset = 0; offset < region.byteLength; offset += 4096) region.bytes[offset] = 9;
        console.log("written");
        setInterval(() => {}, 1000);
      `);
      const reader = child.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("written");
      child.kill(signal);
      const ended = await Promise.race([child.exited, Bun.sleep(30_000).then(() => "hung")]);
      expect(ended).not.toBe("hung");
      expect(child.signalCode).toBe(signal);
      const bytes = readFileSync(path);
      let missing = 0;
      for (let offset = 0; offset < bytes.length; offset += 4096) missing += bytes[offset] === 9 ? 0 : 1;
      expect(missing).toBe(0);
    });
  }

  test("a script's own signal handler is left to decide; once its regions are closed, signals act as without bun-umap", async () => {
    const path = patternFile(1 * MiB);
    const child = run(`
      import { umap } from "./src/index.ts";
      const region = await umap(${JSON.stringify(path)}, { writable: true, bufferSize: 1 << 20 });
      region.bytes[0] = 5;
      process.once("SIGTERM", async () => {
        console.log("script handler");
        await region.close();
        process.kill(process.pid, "SIGTERM");
      });
      console.log("ready");
      setInterval(() => {}, 1000);
    `);
    const reader = child.stdout.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
    child.kill("SIGTERM");
    const ended = await Promise.race([child.exited, Bun.sleep(30_000).then(() => "hung")]);
    expect(ended).not.toBe("hung");
    let rest = "";
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += new TextDecoder().decode(chunk.value);
    expect(rest).toContain("script handler");
    expect(child.signalCode).toBe("SIGTERM");
    expect(readFileSync(path)[0]).toBe(5);
  });

  test.each([
    ["userfaultfd write-protection", "1", "write-protection"],
    // Without UFFDIO_POISON a failed fill would be an unprotected zero page: a write to it was lost.
    ["UFFDIO_POISON", String(1 << 14), "UFFDIO_POISON"],
  ])("without %s, writable: true is refused naming it; read-only still works", async (_name, mask, named) => {
    const path = patternFile(64 * KiB);
    const child = run(
      `
      import { umap } from "./src/index.ts";
      const error = await umap(${JSON.stringify(path)}, { writable: true }).catch((e) => e);
      console.log(error.code, error.message);
      const region = await umap(${JSON.stringify(path)});
      console.log("read", region.bytes[1]);
      await region.close();
    `,
      { BUN_UMAP_MASK_FEATURES: mask },
    );
    expect(await child.exited).toBe(0);
    const out = await new Response(child.stdout).text();
    expect(out).toContain("ERR_UMAP_UNSUPPORTED");
    expect(out).toContain(named);
    expect(out).toContain(`read ${(patternWord(0) >>> 8) & 0xff}`);
  });
});

function checkPatternByte(offset: number): number {
  return (patternWord(Math.floor(offset / 4)) >>> ((offset % 4) * 8)) & 0xff;
}
