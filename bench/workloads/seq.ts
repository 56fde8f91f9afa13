/**
 * seq-warm and seq-cold: sum a file of Float64 values front to back, through umap at several
 * page sizes, through Bun.mmap, and with readSync into a reused 1 MiB buffer. Warm: the file is
 * in the page cache. Cold: it is dropped from the page cache before every run.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { umap, type Region, type RegionStats } from "../../src/index.ts";
import { GiB, KiB, MiB, formatBytes, warmPageCache, type Float64File } from "../lib/data.ts";
import { cachedFraction, dropFromPageCache } from "../lib/libc.ts";
import { target, type Ratio } from "../lib/report.ts";
import { gigabytesPerSecond, metricOf, releaseMappings, runSystems, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";

const READ_CHUNK_BYTES = 1 * MiB;
const UMAP_PAGE_SIZES = [64 * KiB, 1 * MiB, 2 * MiB];
/** UFFD_FEATURE_MOVE: masked off, 2 MiB pages are filled by UFFDIO_COPY as smaller ones are. */
const UFFD_FEATURE_MOVE = 1 << 16;

/** Sum of a Float64Array, front to back. One function for every system, so the JIT treats them alike. */
export function sumFloat64(values: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum;
}

/** What scanRegion() measured. */
export interface RegionScan {
  sum: number;
  /** The scan alone. */
  seconds: number;
  /** Of every thread of the process during the scan: two cores bound it at twice the scan's time. */
  cpuSeconds: number;
  /** Bun.nanoseconds() when the scan began, for set-up times measured by the caller. */
  startedNs: number;
  closeMs: number;
  stats: RegionStats;
}

/**
 * Sums the first wordCount Float64 values of a region, timing the scan alone, then closes the
 * region (also when the scan throws). `afterScan` runs right after the scan, before the close,
 * for counters of other processes.
 */
export async function scanRegion(region: Region, wordCount: number, afterScan?: () => void): Promise<RegionScan> {
  const cpuBefore = process.cpuUsage();
  const startedNs = Bun.nanoseconds();
  let sum: number;
  try {
    sum = sumFloat64(new Float64Array(region.bytes.buffer, region.bytes.byteOffset, wordCount));
  } catch (error) {
    await region.close();
    throw error;
  }
  const endedNs = Bun.nanoseconds();
  const cpu = process.cpuUsage(cpuBefore);
  afterScan?.();
  const stats = region.stats();
  await region.close();
  return {
    sum,
    seconds: (endedNs - startedNs) / 1e9,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    startedNs,
    closeMs: (Bun.nanoseconds() - endedNs) / 1e6,
    stats,
  };
}

function checkSum(got: number, file: Float64File): string | null {
  return got === file.sum ? null : `sum ${got}, expected ${file.sum}`;
}

export function umapSystemName(pageSize: number): string {
  return `umap ${formatBytes(pageSize)}`;
}

/**
 * Maps a path with umap, with some userfaultfd features masked off (BUN_UMAP_MASK_FEATURES is
 * read when the engine starts, and every region here starts its own engine).
 */
export async function umapMasked(path: string, options: Parameters<typeof umap>[1], maskFeatures = 0) {
  if (maskFeatures === 0) return umap(path, options);
  process.env.BUN_UMAP_MASK_FEATURES = String(maskFeatures);
  try {
    return await umap(path, options);
  } finally {
    delete process.env.BUN_UMAP_MASK_FEATURES;
  }
}

/** Sums the file through umap; the timed part is the scan, the mapping and closing are extra. */
async function umapScan(file: Float64File, pageSize: number, bufferSize: number, maskFeatures = 0): Promise<Sample> {
  const setupStart = Bun.nanoseconds();
  const region = await umapMasked(file.path, { pageSize, bufferSize }, maskFeatures);
  const { sum, seconds, startedNs, closeMs, stats } = await scanRegion(region, file.wordCount);
  return {
    seconds,
    problem: checkSum(sum, file),
    extra: {
      setupMs: (startedNs - setupStart) / 1e6,
      closeMs,
      faults: stats.faults,
      duplicateFaults: stats.duplicateFaults,
      fills: stats.fills,
      fillRequests: stats.fillRequests,
      readAheadPages: stats.readAheadPages,
      evictions: stats.evictions,
      movedPages: stats.movedPages,
    },
  };
}

function mmapScan(file: Float64File): Sample {
  const setupStart = Bun.nanoseconds();
  let bytes: Uint8Array | null = Bun.mmap(file.path, { shared: false });
  const scanStart = Bun.nanoseconds();
  const sum = sumFloat64(new Float64Array(bytes.buffer, bytes.byteOffset, file.wordCount));
  const scanEnd = Bun.nanoseconds();
  bytes = null;
  releaseMappings();
  return { seconds: (scanEnd - scanStart) / 1e9, problem: checkSum(sum, file), extra: { setupMs: (scanStart - setupStart) / 1e6 } };
}

function readSyncScan(file: Float64File): Sample {
  const buffer = new Float64Array(READ_CHUNK_BYTES / 8);
  const bytes = new Uint8Array(buffer.buffer);
  const scanStart = Bun.nanoseconds();
  const fd = openSync(file.path, "r");
  let sum = 0;
  try {
    for (let byteOffset = 0; byteOffset < file.byteLength; ) {
      const got = readSync(fd, bytes, 0, Math.min(bytes.length, file.byteLength - byteOffset), byteOffset);
      if (got <= 0 || got % 8 !== 0) throw new Error(`readSync returned ${got} at byte offset ${byteOffset}`);
      sum += sumFloat64(got === bytes.length ? buffer : buffer.subarray(0, got / 8));
      byteOffset += got;
    }
  } finally {
    closeSync(fd);
  }
  return { seconds: (Bun.nanoseconds() - scanStart) / 1e9, problem: checkSum(sum, file) };
}

function makeSeqWorkload(cold: boolean): Workload {
  return {
    name: cold ? "seq-cold" : "seq-warm",
    description: cold
      ? "sum a Float64 file front to back, dropped from the page cache before each run"
      : "sum a Float64 file front to back, page cache warm",
    async run(context: BenchContext) {
      const byteLength = context.quick ? 32 * MiB : 1 * GiB;
      const bufferSize = context.quick ? 8 * MiB : 256 * MiB;
      const file = context.data.float64File(byteLength);
      const notes: string[] = [];
      let dropProblem: string | null = null;
      const cachedAfterDrop: number[] = [];
      // Every run starts from the same page-cache state: all of the file, or none of it.
      const prepare = () => {
        if (!cold) {
          warmPageCache(file.path);
          return;
        }
        dropProblem ??= dropFromPageCache(file.path);
        const fraction = cachedFraction(file.path);
        if (fraction !== null) cachedAfterDrop.push(fraction);
      };
      const metric = gigabytesPerSecond(byteLength);
      const systems: SystemSpec[] = [
        ...UMAP_PAGE_SIZES.map((pageSize) => ({
          name: umapSystemName(pageSize),
          run: async () => (prepare(), await umapScan(file, pageSize, bufferSize)),
          metric,
        })),
        // The same pages filled by copying, to show what UFFDIO_MOVE buys.
        {
          name: `${umapSystemName(2 * MiB)} copy`,
          run: async () => (prepare(), await umapScan(file, 2 * MiB, bufferSize, UFFD_FEATURE_MOVE)),
          metric,
        },
        { name: "Bun.mmap", run: async () => (prepare(), mmapScan(file)), metric },
        { name: "readSync 1 MiB", run: async () => (prepare(), readSyncScan(file)), metric },
      ];
      const { systems: results, checks } = await runSystems(context, this.name, systems);
      if (cold) {
        checks.push({
          name: "page cache dropped",
          passed: dropProblem === null && cachedAfterDrop.every((f) => f < 0.05),
          detail:
            dropProblem ??
            (cachedAfterDrop.length > 0
              ? `largest cached fraction right after a drop: ${Math.max(...cachedAfterDrop).toFixed(3)}`
              : "fincore(1) is missing: the drop was not verified"),
        });
      }
      const mmap = metricOf(results, "Bun.mmap");
      const ratios: Ratio[] = [];
      for (const system of results) {
        if (system.name !== "Bun.mmap") ratios.push({ name: `${system.name} / Bun.mmap`, value: system.metric.value / mmap });
      }
      const umapRatios = ratios.filter((r) => r.name.startsWith("umap"));
      const best = umapRatios.reduce((a, b) => (b.value > a.value ? b : a), umapRatios[0] ?? { name: "umap / Bun.mmap", value: Number.NaN });
      const targets = [
        cold
          ? target(`best umap page size (${best.name.split(" / ")[0]}) vs Bun.mmap, cold`, best.value, "at least", 1.0)
          : target(`best umap page size (${best.name.split(" / ")[0]}) vs Bun.mmap, warm`, best.value, "at least", 0.8),
      ];
      notes.push(`"${umapSystemName(2 * MiB)} copy" is umap at 2 MiB pages with UFFDIO_MOVE masked off (filled by UFFDIO_COPY, as pages below 2 MiB always are).`);
      notes.push("Timed: the scan only. Mapping (umap() starting the engine and its workers) and closing are in each system's extra as setupMs/closeMs.");
      return {
        parameters: { byteLength, bufferSize, readChunkBytes: READ_CHUNK_BYTES, pageSizes: UMAP_PAGE_SIZES.join(","), repeats: context.repeats, cold },
        systems: results,
        ratios,
        targets,
        checks,
        notes,
      };
    },
  };
}

export const seqWarm = makeSeqWorkload(false);
export const seqCold = makeSeqWorkload(true);
