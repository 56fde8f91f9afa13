/**
 * sort: UMap's umapsort. An array of random u64 sorted in place (the introsort of
 * test/fixtures/sort-u64.ts, std::sort's shape), through a writable umap region whose buffer is a
 * quarter of the data, in plain memory, and through a shared Bun.mmap of the file.
 */
import { closeSync, fsyncSync, openSync, readFileSync, rmSync } from "node:fs";
import { umap } from "../../src/index.ts";
import { sortU64InPlace } from "../../test/fixtures/sort-u64.ts";
import { KiB, MiB, checkSortedFile, u64Checksum, type U64Checksum, type U64File } from "../lib/data.ts";
import { target } from "../lib/report.ts";
import { metricOf, releaseMappings, runSystems, secondsMetric, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";
import { umapSystemName } from "./seq.ts";

const UMAP_PAGE_SIZES = [64 * KiB, 1 * MiB, 2 * MiB];

function checkSortedWords(words: Uint32Array, before: U64Checksum): string | null {
  for (let i = 2; i < words.length; i += 2) {
    const high = words[i + 1]!, previousHigh = words[i - 1]!;
    if (high < previousHigh || (high === previousHigh && words[i]! < words[i - 2]!)) return `not sorted at element ${i / 2}`;
  }
  const after = u64Checksum(words);
  return after.lowSum === before.lowSum && after.highSum === before.highSum && after.xor === before.xor
    ? null
    : "the sorted values differ from the input's (checksum)";
}

async function umapSort(context: BenchContext, file: U64File, pageSize: number, bufferSize: number): Promise<Sample> {
  const path = context.data.copy(file.path, "sort-umap");
  try {
    const setupStart = Bun.nanoseconds();
    const region = await umap(path, { writable: true, pageSize, bufferSize });
    const start = Bun.nanoseconds();
    let flushed: number;
    let stats: ReturnType<typeof region.stats>;
    try {
      sortU64InPlace(new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, file.byteLength / 4));
      await region.flush();
      flushed = Bun.nanoseconds();
      stats = region.stats();
    } finally {
      await region.close();
    }
    return {
      seconds: (flushed - start) / 1e9,
      problem: checkSortedFile(path, file.checksum),
      extra: {
        setupMs: (start - setupStart) / 1e6,
        faults: stats.faults,
        writeFaults: stats.writeFaults,
        fills: stats.fills,
        evictions: stats.evictions,
        writebacks: stats.writebacks,
        bytesReadMiB: stats.bytesRead / MiB,
        bytesWrittenMiB: stats.bytesWritten / MiB,
      },
    };
  } finally {
    rmSync(path, { force: true });
  }
}

function memorySort(file: U64File): Sample {
  const bytes = readFileSync(file.path);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const start = Bun.nanoseconds();
  sortU64InPlace(words);
  const seconds = (Bun.nanoseconds() - start) / 1e9;
  return { seconds, problem: checkSortedWords(words, file.checksum) };
}

function mmapSort(context: BenchContext, file: U64File): Sample {
  const path = context.data.copy(file.path, "sort-mmap");
  try {
    let bytes: Uint8Array | null = Bun.mmap(path, { shared: true });
    const fd = openSync(path, "r+");
    const start = Bun.nanoseconds();
    let seconds: number;
    try {
      sortU64InPlace(new Uint32Array(bytes.buffer, bytes.byteOffset, file.byteLength / 4));
      // A shared mapping's dirty pages are the file's page cache: fsync writes them.
      fsyncSync(fd);
      seconds = (Bun.nanoseconds() - start) / 1e9;
    } finally {
      closeSync(fd);
      bytes = null;
      releaseMappings();
    }
    return { seconds, problem: checkSortedFile(path, file.checksum) };
  } finally {
    rmSync(path, { force: true });
  }
}

export const sort: Workload = {
  name: "sort",
  description: "sort random u64 in place (umapsort), buffer a quarter of the data",
  async run(context) {
    const byteLength = context.quick ? 16 * MiB : 256 * MiB;
    const bufferSize = byteLength / 4;
    const file = context.data.u64File(byteLength);
    // A buffer of a few pages thrashes on the sort's two-ended partitions (below 4 pages, the
    // low-water mark leaves room for one page: every step then evicts the other end), so the
    // quick run's small buffer leaves out the largest pages.
    const pageSizes = UMAP_PAGE_SIZES.filter((pageSize) => bufferSize / pageSize >= 4);
    const systems: SystemSpec[] = [
      ...pageSizes.map((pageSize) => ({
        name: umapSystemName(pageSize),
        run: () => umapSort(context, file, pageSize, bufferSize),
        metric: secondsMetric,
      })),
      { name: "in memory", run: async () => memorySort(file), metric: secondsMetric },
      { name: "Bun.mmap shared", run: async () => mmapSort(context, file), metric: secondsMetric },
    ];
    // Each run takes seconds at full size: three repeats are enough for a median.
    const repeats = Math.min(3, context.repeats);
    const { systems: results, checks } = await runSystems(context, "sort", systems, repeats);
    const memory = metricOf(results, "in memory");
    const ratios = results.filter((s) => s.name !== "in memory").map((s) => ({ name: `${s.name} / in memory`, value: s.metric.value / memory }));
    const umapRatios = ratios.filter((r) => r.name.startsWith("umap"));
    const best = umapRatios.reduce((a, b) => (b.value < a.value ? b : a), umapRatios[0] ?? { name: "umap / in memory", value: Number.NaN });
    return {
      parameters: { byteLength, bufferSize, elementCount: byteLength / 8, pageSizes: pageSizes.join(","), repeats },
      systems: results,
      ratios,
      targets: [target(`best umap page size (${best.name.split(" / ")[0]}) time / in-memory time`, best.value, "at most", 2)],
      checks,
      notes: [
        "Timed: umap, the sort and flush() (every page written back); Bun.mmap, the sort and fsync; in memory, the sort alone (the data already read).",
        "Ratios here are of times: lower is better.",
      ],
    };
  },
};
