/**
 * write: a file's worth of Float64 values written front to back, then made durable. umap
 * writable with flush(), writeSync of a reused 1 MiB buffer then fsync, and a shared Bun.mmap
 * then fsync. Each run writes values of its own seed, so a stale file from an earlier run fails
 * the check.
 */
import { closeSync, fsyncSync, openSync, rmSync } from "node:fs";
import { umap } from "../../src/index.ts";
import { KiB, MiB, checkValuesFile, fillValues, writeAll } from "../lib/data.ts";
import { gigabytesPerSecond, metricOf, releaseMappings, runSystems, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";
import { umapSystemName } from "./seq.ts";

const UMAP_PAGE_SIZES = [64 * KiB, 1 * MiB];
const WRITE_CHUNK_BYTES = 1 * MiB;

/** Fills the array with valueAt(i, seed) in 1 MiB steps (the same loop for every system). */
function writeValues(values: Float64Array, seed: number): void {
  const step = WRITE_CHUNK_BYTES / 8;
  for (let first = 0; first < values.length; first += step) fillValues(values.subarray(first, Math.min(values.length, first + step)), first, seed);
}

export const write: Workload = {
  name: "write",
  description: "write a file sequentially, then make it durable",
  async run(context: BenchContext) {
    const byteLength = context.quick ? 32 * MiB : 512 * MiB;
    const bufferSize = context.quick ? 8 * MiB : 64 * MiB;
    const wordCount = byteLength / 8;
    let seedCounter = 0x77_0000;
    // Each run has its own file and seed; the file is checked after the timed part, then removed.
    const withFile = async (name: string, body: (path: string, seed: number) => Promise<Sample>): Promise<Sample> => {
      const path = context.data.sparseFile(name, byteLength);
      const seed = seedCounter++;
      try {
        const sample = await body(path, seed);
        return { ...sample, problem: sample.problem ?? checkValuesFile(path, seed, wordCount) };
      } finally {
        rmSync(path, { force: true });
      }
    };
    const metric = gigabytesPerSecond(byteLength);
    const systems: SystemSpec[] = [
      ...UMAP_PAGE_SIZES.map((pageSize) => ({
        name: `${umapSystemName(pageSize)} + flush`,
        run: () =>
          withFile("write-umap", async (path, seed) => {
            const setupStart = Bun.nanoseconds();
            const region = await umap(path, { writable: true, pageSize, bufferSize });
            const start = Bun.nanoseconds();
            let seconds: number;
            let stats: ReturnType<typeof region.stats>;
            try {
              writeValues(new Float64Array(region.bytes.buffer, region.bytes.byteOffset, wordCount), seed);
              await region.flush();
              seconds = (Bun.nanoseconds() - start) / 1e9;
              stats = region.stats();
            } finally {
              await region.close();
            }
            return {
              seconds,
              problem: null,
              extra: { setupMs: (start - setupStart) / 1e6, faults: stats.faults, writeFaults: stats.writeFaults, fills: stats.fills, evictions: stats.evictions, writebacks: stats.writebacks },
            };
          }),
        metric,
      })),
      {
        name: "writeSync + fsync",
        run: () =>
          withFile("write-sync", async (path, seed) => {
            const chunk = new Float64Array(WRITE_CHUNK_BYTES / 8);
            const fd = openSync(path, "r+");
            try {
              const start = Bun.nanoseconds();
              for (let byteOffset = 0; byteOffset < byteLength; byteOffset += WRITE_CHUNK_BYTES) {
                const words = chunk.subarray(0, Math.min(WRITE_CHUNK_BYTES, byteLength - byteOffset) / 8);
                fillValues(words, byteOffset / 8, seed);
                writeAll(fd, new Uint8Array(words.buffer, 0, words.byteLength), byteOffset);
              }
              fsyncSync(fd);
              return { seconds: (Bun.nanoseconds() - start) / 1e9, problem: null };
            } finally {
              closeSync(fd);
            }
          }),
        metric,
      },
      {
        name: "Bun.mmap shared + fsync",
        run: () =>
          withFile("write-mmap", async (path, seed) => {
            let bytes: Uint8Array | null = Bun.mmap(path, { shared: true });
            const fd = openSync(path, "r+");
            try {
              const start = Bun.nanoseconds();
              writeValues(new Float64Array(bytes.buffer, bytes.byteOffset, wordCount), seed);
              fsyncSync(fd);
              return { seconds: (Bun.nanoseconds() - start) / 1e9, problem: null };
            } finally {
              closeSync(fd);
              bytes = null;
              releaseMappings();
            }
          }),
        metric,
      },
    ];
    // Each run takes seconds at full size: three repeats are enough for a median.
    const repeats = Math.min(3, context.repeats);
    const { systems: results, checks } = await runSystems(context, "write", systems, repeats);
    const peer = metricOf(results, "writeSync + fsync");
    const mmap = metricOf(results, "Bun.mmap shared + fsync");
    const ratios = results
      .filter((s) => s.name.startsWith("umap"))
      .flatMap((s) => [
        { name: `${s.name} / writeSync + fsync`, value: s.metric.value / peer },
        { name: `${s.name} / Bun.mmap shared + fsync`, value: s.metric.value / mmap },
      ]);
    return {
      parameters: { byteLength, bufferSize, writeChunkBytes: WRITE_CHUNK_BYTES, pageSizes: UMAP_PAGE_SIZES.join(","), repeats },
      systems: results,
      ratios,
      targets: [],
      checks,
      notes: ["The file exists at full size (sparse) before each run; umap fills each page from it (zeros) before the first write."],
    };
  },
};
