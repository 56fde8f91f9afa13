/**
 * random: 8-byte reads at random pages of a warm 1 GiB file, each timed on its own. umap with
 * 4 KiB pages and a 64 MiB buffer (so most reads fault) against Bun.mmap and pread.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { umap } from "../../src/index.ts";
import { GiB, KiB, MiB, valueAt, warmPageCache, type Float64File } from "../lib/data.ts";
import { target, type SystemResult } from "../lib/report.ts";
import { percentile, xorshift32 } from "../lib/stats.ts";
import { umapSystemName } from "./seq.ts";
import { releaseMappings, runSystems, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";

const PAGE_SIZE = 4 * KiB;
/** The target is judged at 4 KiB; larger pages show what a default made for scans costs here. */
const UMAP_PAGE_SIZES = [4 * KiB, 64 * KiB];
const RANDOM_SEED = 0x0bad_5eed;

/** The word indices to read: one random word in a random page, from a fixed seed. */
function randomWords(file: Float64File, count: number): Float64Array {
  const next = xorshift32(RANDOM_SEED);
  const pageCount = file.byteLength / PAGE_SIZE;
  const words = new Float64Array(count);
  for (let i = 0; i < count; i++) words[i] = (next() % pageCount) * (PAGE_SIZE / 8) + (next() % (PAGE_SIZE / 8));
  return words;
}

/** Reads every word through read(), timing each; the values are summed and checked. */
function timedReads(words: Float64Array, read: (wordIndex: number) => number, latenciesNs: Float64Array): { sum: number; seconds: number } {
  let sum = 0;
  const start = Bun.nanoseconds();
  for (let i = 0; i < words.length; i++) {
    const before = Bun.nanoseconds();
    sum += read(words[i]!);
    latenciesNs[i] = Bun.nanoseconds() - before;
  }
  return { sum, seconds: (Bun.nanoseconds() - start) / 1e9 };
}

function latencyExtra(latenciesNs: Float64Array): Record<string, number> {
  const list = Array.from(latenciesNs);
  return { p50Us: percentile(list, 0.5) / 1e3, p90Us: percentile(list, 0.9) / 1e3, p99Us: percentile(list, 0.99) / 1e3 };
}

export const random: Workload = {
  name: "random",
  description: "8-byte reads at random 4 KiB pages of a warm file, each timed",
  async run(context) {
    const byteLength = context.quick ? 32 * MiB : 1 * GiB;
    const bufferSize = context.quick ? 4 * MiB : 64 * MiB;
    const readCount = context.quick ? 4_000 : 50_000;
    const file = context.data.float64File(byteLength);
    const words = randomWords(file, readCount);
    let expected = 0;
    for (let i = 0; i < words.length; i++) expected += valueAt(words[i]!, file.seed);
    const check = (sum: number) => (sum === expected ? null : `sum ${sum}, expected ${expected}`);
    const latenciesNs = new Float64Array(readCount);
    const metric = (medianSeconds: number): SystemResult["metric"] => ({ name: "reads", unit: "reads/s", value: readCount / medianSeconds, higherIsBetter: true });
    // Percentiles are of the median repeat's reads (by total time), so one noisy repeat does not set them.
    const summarize = (samples: Sample[]) => {
      const sorted = [...samples].sort((a, b) => a.seconds - b.seconds);
      const middle = sorted[(sorted.length - 1) >> 1]!;
      const out: Record<string, number> = {};
      for (const key of ["p50Us", "p90Us", "p99Us", "faultsPerSecond"]) if (key in (middle.extra ?? {})) out[key] = Number(middle.extra![key]);
      return out;
    };
    const warm = () => warmPageCache(file.path);
    const systems: SystemSpec[] = [
      ...UMAP_PAGE_SIZES.map((pageSize) => ({
        name: umapSystemName(pageSize),
        async run() {
          warm();
          // No read-ahead: for random reads it only fills pages nobody reads.
          const region = await umap(file.path, { pageSize, bufferSize, readAhead: 0 });
          try {
            const values = new Float64Array(region.bytes.buffer, region.bytes.byteOffset, file.wordCount);
            const { sum, seconds } = timedReads(words, (w) => values[w]!, latenciesNs);
            const stats = region.stats();
            return {
              seconds,
              problem: check(sum),
              extra: { ...latencyExtra(latenciesNs), faults: stats.faults, fills: stats.fills, evictions: stats.evictions, faultsPerSecond: stats.faults / seconds },
            };
          } finally {
            await region.close();
          }
        },
        metric,
        summarize,
      })),
      {
        name: "Bun.mmap",
        async run() {
          warm();
          let bytes: Uint8Array | null = Bun.mmap(file.path, { shared: false });
          const values = new Float64Array(bytes.buffer, bytes.byteOffset, file.wordCount);
          const { sum, seconds } = timedReads(words, (w) => values[w]!, latenciesNs);
          bytes = null;
          releaseMappings();
          return { seconds, problem: check(sum), extra: latencyExtra(latenciesNs) };
        },
        metric,
        summarize,
      },
      {
        name: "pread",
        async run() {
          warm();
          const fd = openSync(file.path, "r");
          const word = new Float64Array(1);
          const wordBytes = new Uint8Array(word.buffer);
          try {
            const { sum, seconds } = timedReads(
              words,
              (w) => {
                if (readSync(fd, wordBytes, 0, 8, w * 8) !== 8) throw new Error(`short pread at word ${w}`);
                return word[0]!;
              },
              latenciesNs,
            );
            return { seconds, problem: check(sum), extra: latencyExtra(latenciesNs) };
          } finally {
            closeSync(fd);
          }
        },
        metric,
        summarize,
      },
    ];
    const { systems: results, checks } = await runSystems(context, "random", systems);
    const umapResult = results.find((s) => s.name === "umap 4 KiB");
    const mmap = results.find((s) => s.name === "Bun.mmap");
    const p50 = Number(umapResult?.extra.p50Us ?? Number.NaN);
    return {
      parameters: { byteLength, bufferSize, pageSize: PAGE_SIZE, pageSizes: UMAP_PAGE_SIZES.join(","), readCount, readAhead: 0, seed: RANDOM_SEED, repeats: context.repeats },
      systems: results,
      ratios: mmap ? results.filter((s) => s.name.startsWith("umap")).map((s) => ({ name: `${s.name} / Bun.mmap`, value: s.metric.value / mmap.metric.value })) : [],
      targets: [target("umap p50 per 4 KiB fault (us)", p50, "at most", 25)],
      checks,
      notes: [
        "Each read is timed on its own with Bun.nanoseconds() (about 30-40 ns of overhead each).",
        `With a buffer of ${bufferSize / MiB} MiB over ${byteLength / MiB} MiB, about ${((1 - bufferSize / byteLength) * 100).toFixed(0)}% of umap's reads fault.`,
      ],
    };
  },
};
