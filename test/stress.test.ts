/**
 * Stress: several threads faulting and writing while regions are closed and reopened under them
 * and the shared buffer churns. Bounded in time; data and counters are asserted.
 *
 * Method. Four writable regions over four pattern files and one read-only region share a buffer
 * an eighth of their total size. Each round, three Worker threads each take one writable region
 * and a disjoint set of its pages: they stamp 16 words of each page with (file, page, word,
 * round), read them back, and read random words of the read-only region against the pattern.
 * Meanwhile the main thread reads the read-only region too. After the round one writable region
 * is closed (flushing it), its file is checked word by word against the record of every stamp
 * written so far, and it is mapped again for the next round, so faults, write-backs, evictions and
 * closes overlap across rounds. The run stops after ROUNDS_MAX rounds or TIME_BUDGET_MS, whichever
 * comes first; then every file is checked once more.
 */
import { afterAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { umap, type Region } from "../src/index.ts";
import { KiB, MiB, patternWord, random, tempDir, writePatternFile } from "./helpers.ts";
import { STAMPED_WORDS_PER_PAGE, stamp } from "./fixtures/stress-stamp.ts";

const PAGE_SIZE = 16 * KiB;
const FILE_BYTES = 4 * MiB;
const FILE_COUNT = 4;
const THREADS = 3;
const ROUNDS_MAX = 12;
const TIME_BUDGET_MS = 8_000;
const BUFFER_BYTES = ((FILE_COUNT + 1) * FILE_BYTES) / 8;
const PAGES = FILE_BYTES / PAGE_SIZE;
const WORDS_PER_PAGE = PAGE_SIZE / 4;

const dir = tempDir();
afterAll(() => dir.remove());

/** The round that last stamped each page of each file, or -1. */
const lastStamp = Array.from({ length: FILE_COUNT }, () => new Int32Array(PAGES).fill(-1));

function checkFile(path: string, fileIndex: number): string[] {
  const bytes = readFileSync(path);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const errors: string[] = [];
  const step = WORDS_PER_PAGE / STAMPED_WORDS_PER_PAGE;
  for (let page = 0; page < PAGES && errors.length < 10; page++) {
    const round = lastStamp[fileIndex]![page]!;
    for (let word = 0; word < WORDS_PER_PAGE; word++) {
      const index = page * WORDS_PER_PAGE + word;
      const stamped = round >= 0 && word % step === 0;
      const expected = stamped ? stamp(fileIndex, page, word / step, round) : patternWord(index);
      if (words[index] !== expected) {
        errors.push(`file ${fileIndex} page ${page} word ${word}: got ${words[index]}, expected ${expected}${stamped ? ` (round ${round})` : ""}`);
        break;
      }
    }
  }
  return errors;
}

function runThread(workerData: unknown): Promise<{ errors: string[]; checked: number }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./fixtures/stress-worker.ts", import.meta.url), { workerData });
    worker.once("message", resolve);
    worker.once("error", reject);
  });
}

test("threads fault and write while regions close and reopen and the buffer churns: no lost or wrong data", async () => {
  const paths = Array.from({ length: FILE_COUNT }, (_, i) => join(dir.path, `stress-${i}.bin`));
  for (const path of paths) writePatternFile(path, FILE_BYTES);
  const readOnlyPath = join(dir.path, "stress-read-only.bin");
  writePatternFile(readOnlyPath, FILE_BYTES);
  const options = { pageSize: PAGE_SIZE, bufferSize: BUFFER_BYTES, fillers: 3, evictors: 2 };
  const regions: Region[] = [];
  for (const path of paths) regions.push(await umap(path, { ...options, writable: true }));
  const readOnly = await umap(readOnlyPath, options);
  const next = random(2024);
  const started = performance.now();
  let rounds = 0;
  let checked = 0;
  let evictions = 0;
  try {
    while (rounds < ROUNDS_MAX && performance.now() - started < TIME_BUDGET_MS) {
      const round = rounds++;
      const jobs = Array.from({ length: THREADS }, (_, thread) => {
        const fileIndex = (thread + round) % FILE_COUNT;
        // Threads on the same region this round never share a page.
        const pages = Array.from({ length: PAGES / 4 }, () => Math.floor(next() * PAGES)).filter((page) => page % THREADS === thread);
        for (const page of pages) lastStamp[fileIndex]![page] = round;
        const region = regions[fileIndex]!;
        return runThread({
          region: { address: region.address, byteLength: region.byteLength, fileIndex },
          readOnly: { address: readOnly.address, byteLength: readOnly.byteLength },
          pageSize: PAGE_SIZE,
          pages,
          round,
          reads: 4000,
          seed: round * THREADS + thread + 1,
        });
      });
      // The main thread faults too while the workers run.
      const words = new Uint32Array(readOnly.bytes.buffer, 0, FILE_BYTES / 4);
      let mainWrong = 0;
      for (let i = 0; i < 2000; i++) {
        const index = Math.floor(next() * words.length);
        mainWrong += words[index] === patternWord(index) ? 0 : 1;
      }
      expect(mainWrong).toBe(0);
      const results = await Promise.all(jobs);
      for (const result of results) {
        expect(result.errors).toEqual([]);
        checked += result.checked;
      }
      const resident = [...regions, readOnly].reduce((sum, region) => sum + region.stats().residentPages * PAGE_SIZE, 0);
      expect(resident).toBeLessThanOrEqual(BUFFER_BYTES);

      // Close one writable region (flushing it), check its file, and map it again.
      const closing = round % FILE_COUNT;
      const stats = regions[closing]!.stats();
      expect(stats.fillErrors).toBe(0);
      expect(stats.writebackErrors).toBe(0);
      evictions += stats.evictions;
      await regions[closing]!.close();
      expect(checkFile(paths[closing]!, closing)).toEqual([]);
      regions[closing] = await umap(paths[closing]!, { ...options, writable: true });
    }
  } finally {
    for (const region of regions) await region.close();
    await readOnly.close();
  }
  for (let i = 0; i < FILE_COUNT; i++) expect(checkFile(paths[i]!, i)).toEqual([]);
  expect(rounds).toBeGreaterThanOrEqual(2);
  expect(checked).toBeGreaterThan(0);
  expect(evictions).toBeGreaterThan(0);
  console.log(`stress: ${rounds} rounds, ${checked} words checked by threads, ${evictions} evictions`);
}, 60_000);
