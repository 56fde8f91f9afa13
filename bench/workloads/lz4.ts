/**
 * lz4: a compressible Float64 dataset (runs of repeated 12-bit readings, see compressibleValueAt)
 * packed with Lz4Store.pack() and summed front to back through umap over the Lz4Store; against
 * umap over the raw file (FileStore, the same page size and buffer) and against decompressing a
 * whole-file LZ4 block of the same data with lz4-napi in one call (the file read included).
 * All three files are warm in the page cache before each run, so the gap is decompression and
 * paging, not the disk.
 */
import { uncompressSync, compressSync } from "lz4-napi";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { Lz4Store, umap } from "../../src/index.ts";
import { KiB, MiB, formatBytes, warmPageCache, type Float64File } from "../lib/data.ts";
import { target, type Ratio } from "../lib/report.ts";
import { gigabytesPerSecond, metricOf, runSystems, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";
import { scanRegion, sumFloat64, umapSystemName } from "./seq.ts";

/** Lz4Store's default chunk size, set here explicitly. */
const CHUNK_SIZE = 64 * KiB;
const UMAP_PAGE_SIZES = [1 * MiB, 64 * KiB];
const WHOLE_FILE = "lz4-napi whole file";

function fileStoreName(pageSize: number): string {
  return `${umapSystemName(pageSize)} FileStore (raw)`;
}

function lz4StoreName(pageSize: number): string {
  return `${umapSystemName(pageSize)} Lz4Store`;
}

function checkSum(got: number, file: Float64File): string | null {
  return got === file.sum ? null : `sum ${got}, expected ${file.sum}`;
}

/** Maps the store (or path), sums it; the timed part is the scan. */
async function umapScan(file: Float64File, open: () => Promise<Lz4Store | string>, pageSize: number, bufferSize: number): Promise<Sample> {
  const setupStart = Bun.nanoseconds();
  const target = await open();
  try {
    const region = await umap(target, { pageSize, bufferSize });
    const { sum, seconds, cpuSeconds, startedNs, closeMs, stats } = await scanRegion(region, file.wordCount);
    return {
      seconds,
      problem: checkSum(sum, file),
      extra: {
        setupMs: (startedNs - setupStart) / 1e6,
        closeMs,
        cpuSeconds,
        faults: stats.faults,
        fills: stats.fills,
        fillRequests: stats.fillRequests,
        readAheadPages: stats.readAheadPages,
        evictions: stats.evictions,
      },
    };
  } finally {
    if (typeof target !== "string") target.close();
  }
}

/**
 * GB/s of uncompressSync of an in-memory block on this thread (best of three): what one core
 * decompresses with no file read, paging or summing, the bound on each fill worker.
 */
function decompressionRate(block: Buffer, byteLength: number): number {
  let bestSeconds = Number.POSITIVE_INFINITY;
  for (let attempt = 0; attempt < 3; attempt++) {
    const start = Bun.nanoseconds();
    const raw = uncompressSync(block);
    const seconds = (Bun.nanoseconds() - start) / 1e9;
    if (raw.byteLength !== byteLength) throw new Error(`uncompressSync gave ${raw.byteLength} bytes, expected ${byteLength}`);
    bestSeconds = Math.min(bestSeconds, seconds);
  }
  return byteLength / bestSeconds / 1e9;
}

export const lz4: Workload = {
  name: "lz4",
  description: "a compressible Float64 dataset packed with Lz4Store, summed front to back",
  async run(context: BenchContext) {
    const byteLength = context.quick ? 32 * MiB : 256 * MiB;
    const bufferSize = context.quick ? 8 * MiB : 64 * MiB;
    const file = context.data.compressibleFile(byteLength);

    const packed = context.data.scratchPath("packed");
    const packStart = Bun.nanoseconds();
    await Lz4Store.pack(file.path, packed, { chunkSize: CHUNK_SIZE });
    const packSeconds = (Bun.nanoseconds() - packStart) / 1e9;
    const info = await (async () => {
      const store = await Lz4Store.open(packed);
      try {
        return store.info();
      } finally {
        store.close();
      }
    })();
    context.progress(`lz4: packed ${formatBytes(byteLength)} into ${formatBytes(info.fileByteLength)} (ratio ${info.ratio.toFixed(2)}, ${info.rawChunkCount} chunks raw) in ${packSeconds.toFixed(2)} s`);

    // The peer: the whole file as one LZ4 block (lz4-napi prepends the uncompressed size).
    const whole = context.data.scratchPath("whole-lz4");
    writeFileSync(whole, compressSync(readFileSync(file.path)));
    const wholeByteLength = statSync(whole).size;
    const decompressGBps = decompressionRate(readFileSync(whole), byteLength);
    context.progress(`lz4: lz4-napi decompresses the whole block in memory at ${decompressGBps.toFixed(2)} GB/s on one thread`);

    const warm = () => {
      warmPageCache(file.path);
      warmPageCache(packed);
      warmPageCache(whole);
    };
    const metric = gigabytesPerSecond(byteLength);
    const systems: SystemSpec[] = [
      ...UMAP_PAGE_SIZES.flatMap((pageSize): SystemSpec[] => [
        { name: lz4StoreName(pageSize), run: async () => (warm(), await umapScan(file, () => Lz4Store.open(packed), pageSize, bufferSize)), metric },
        { name: fileStoreName(pageSize), run: async () => (warm(), await umapScan(file, async () => file.path, pageSize, bufferSize)), metric },
      ]),
      {
        name: WHOLE_FILE,
        async run() {
          warm();
          const start = Bun.nanoseconds();
          const raw = uncompressSync(readFileSync(whole));
          if (raw.byteLength !== byteLength) throw new Error(`uncompressSync gave ${raw.byteLength} bytes, expected ${byteLength}`);
          const aligned = raw.byteOffset % 8 === 0 ? raw : raw.slice();
          const sum = sumFloat64(new Float64Array(aligned.buffer, aligned.byteOffset, file.wordCount));
          return { seconds: (Bun.nanoseconds() - start) / 1e9, problem: checkSum(sum, file) };
        },
        metric,
      },
    ];
    const { systems: results, checks } = await runSystems(context, "lz4", systems);
    const ratios: Ratio[] = [];
    for (const pageSize of UMAP_PAGE_SIZES) {
      ratios.push({ name: `${lz4StoreName(pageSize)} / ${fileStoreName(pageSize)}`, value: metricOf(results, lz4StoreName(pageSize)) / metricOf(results, fileStoreName(pageSize)) });
    }
    ratios.push({ name: `${WHOLE_FILE} / ${fileStoreName(UMAP_PAGE_SIZES[0]!)}`, value: metricOf(results, WHOLE_FILE) / metricOf(results, fileStoreName(UMAP_PAGE_SIZES[0]!)) });
    const best = ratios.slice(0, UMAP_PAGE_SIZES.length).reduce((a, b) => (b.value > a.value ? b : a));
    return {
      parameters: {
        byteLength,
        bufferSize,
        chunkSize: CHUNK_SIZE,
        pageSizes: UMAP_PAGE_SIZES.join(","),
        packedByteLength: info.fileByteLength,
        ratio: info.ratio,
        lz4ChunkCount: info.lz4ChunkCount,
        rawChunkCount: info.rawChunkCount,
        packSeconds,
        wholeFileByteLength: wholeByteLength,
        decompressGBps,
        repeats: context.repeats,
      },
      systems: results,
      ratios,
      targets: [target(`best Lz4Store page size (${best.name.split(" / ")[0]}) vs FileStore over the raw file, same page size`, best.value, "at least", 0.5)],
      checks,
      notes: [
        `The data: Float64 readings of 12 bits, each held for 8 words; packed ${info.ratio.toFixed(2)} to 1 in ${formatBytes(CHUNK_SIZE)} chunks (Lz4Store), ${(byteLength / wholeByteLength).toFixed(2)} to 1 as one block (lz4-napi).`,
        "Timed for umap: the scan only (mapping and closing are setupMs/closeMs). The whole-file peer is timed from reading the file to the end of its sum.",
      ],
    };
  },
};
