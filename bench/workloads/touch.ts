/**
 * touch: read one byte of every 4 KiB page of a warm file, through umap at several page sizes
 * and through Bun.mmap. It measures the cost of bringing pages in, with almost no work per byte.
 */
import { umap } from "../../src/index.ts";
import { GiB, KiB, MiB, TOUCH_BYTE_OFFSET, TOUCH_STRIDE_BYTES, warmPageCache, type Float64File } from "../lib/data.ts";
import { target, type Ratio } from "../lib/report.ts";
import { gigabytesPerSecond, metricOf, releaseMappings, runSystems, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";
import { umapSystemName } from "./seq.ts";

const UMAP_PAGE_SIZES = [4 * KiB, 64 * KiB, 1 * MiB, 2 * MiB];

/** Sum of one byte per 4 KiB page; the sum is checked, so the JIT cannot drop the reads. */
export function touchPages(bytes: Uint8Array): number {
  let sum = 0;
  for (let at = TOUCH_BYTE_OFFSET; at < bytes.length; at += TOUCH_STRIDE_BYTES) sum += bytes[at]!;
  return sum;
}

function checkTouch(got: number, file: Float64File): string | null {
  return got === file.touchSum ? null : `byte sum ${got}, expected ${file.touchSum}`;
}

async function umapTouch(file: Float64File, pageSize: number, bufferSize: number): Promise<Sample> {
  const setupStart = Bun.nanoseconds();
  const region = await umap(file.path, { pageSize, bufferSize });
  const start = Bun.nanoseconds();
  let sum: number;
  try {
    sum = touchPages(region.bytes);
  } catch (error) {
    await region.close();
    throw error;
  }
  const end = Bun.nanoseconds();
  const stats = region.stats();
  await region.close();
  return {
    seconds: (end - start) / 1e9,
    problem: checkTouch(sum, file),
    extra: { setupMs: (start - setupStart) / 1e6, faults: stats.faults, fills: stats.fills, fillRequests: stats.fillRequests, evictions: stats.evictions },
  };
}

function mmapTouch(file: Float64File): Sample {
  let bytes: Uint8Array | null = Bun.mmap(file.path, { shared: false });
  const start = Bun.nanoseconds();
  const sum = touchPages(bytes);
  const seconds = (Bun.nanoseconds() - start) / 1e9;
  bytes = null;
  releaseMappings();
  return { seconds, problem: checkTouch(sum, file) };
}

export const touch: Workload = {
  name: "touch",
  description: "read one byte per 4 KiB page of a warm file",
  async run(context) {
    const byteLength = context.quick ? 32 * MiB : 1 * GiB;
    const bufferSize = context.quick ? 8 * MiB : 256 * MiB;
    const file = context.data.float64File(byteLength);
    const metric = gigabytesPerSecond(byteLength);
    const warm = () => warmPageCache(file.path);
    const systems: SystemSpec[] = [
      ...UMAP_PAGE_SIZES.map((pageSize) => ({
        name: umapSystemName(pageSize),
        run: async () => (warm(), await umapTouch(file, pageSize, bufferSize)),
        metric,
      })),
      { name: "Bun.mmap", run: async () => (warm(), mmapTouch(file)), metric },
    ];
    const { systems: results, checks } = await runSystems(context, "touch", systems);
    const mmap = metricOf(results, "Bun.mmap");
    const ratios: Ratio[] = results.filter((s) => s.name !== "Bun.mmap").map((s) => ({ name: `${s.name} / Bun.mmap`, value: s.metric.value / mmap }));
    const best = ratios.reduce((a, b) => (b.value > a.value ? b : a), ratios[0] ?? { name: "umap / Bun.mmap", value: Number.NaN });
    return {
      parameters: { byteLength, bufferSize, strideBytes: TOUCH_STRIDE_BYTES, pageSizes: UMAP_PAGE_SIZES.join(","), repeats: context.repeats },
      systems: results,
      ratios,
      targets: [target(`best umap page size (${best.name.split(" / ")[0]}) vs Bun.mmap`, best.value, "at least", 0.3)],
      checks,
      notes: ["Throughput counts the whole file's bytes as brought in, though one byte per 4 KiB page is read."],
    };
  },
};
