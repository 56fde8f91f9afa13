/**
 * One measured run in a fresh process, for the memory workload: its peak resident set size
 * (VmHWM) is then that run's and the runtime's alone, not the suite's earlier allocations.
 *
 *   bun bench/lib/memory-child.ts JSON
 *
 * JSON: { mode: "umap-scan" | "mmap-scan" | "umap-sort" | "memory-sort", path, byteLength,
 * pageSize?, bufferSize?, expectedSum? }. Prints one JSON line: { baselineRssBytes,
 * peakRssBytes, seconds, problem }.
 */
import { readFileSync } from "node:fs";
import { umap } from "../../src/index.ts";
import { sortU64InPlace } from "../../test/fixtures/sort-u64.ts";
import { procStatusBytes, resetPeakRss } from "./machine.ts";

interface Job {
  mode: "umap-scan" | "mmap-scan" | "umap-sort" | "memory-sort";
  path: string;
  byteLength: number;
  pageSize?: number;
  bufferSize?: number;
  expectedSum?: number;
}

function sumFloat64(values: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum;
}

const job = JSON.parse(Bun.argv[2] ?? "{}") as Job;
// Load the library's code before the baseline, so the baseline is the runtime with it loaded.
Bun.gc(true);
const baselineRssBytes = procStatusBytes("VmRSS");
if (!resetPeakRss()) throw new Error("cannot reset the peak RSS (/proc/self/clear_refs)");
const start = Bun.nanoseconds();
let problem: string | null = null;
switch (job.mode) {
  case "umap-scan": {
    const region = await umap(job.path, { pageSize: job.pageSize, bufferSize: job.bufferSize });
    const sum = sumFloat64(new Float64Array(region.bytes.buffer, region.bytes.byteOffset, job.byteLength / 8));
    await region.close();
    if (sum !== job.expectedSum) problem = `sum ${sum}, expected ${job.expectedSum}`;
    break;
  }
  case "mmap-scan": {
    const bytes = Bun.mmap(job.path, { shared: false });
    const sum = sumFloat64(new Float64Array(bytes.buffer, bytes.byteOffset, job.byteLength / 8));
    if (sum !== job.expectedSum) problem = `sum ${sum}, expected ${job.expectedSum}`;
    break;
  }
  case "umap-sort": {
    const region = await umap(job.path, { writable: true, pageSize: job.pageSize, bufferSize: job.bufferSize });
    sortU64InPlace(new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, job.byteLength / 4));
    await region.close();
    break;
  }
  case "memory-sort": {
    const bytes = readFileSync(job.path);
    sortU64InPlace(new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4));
    if (bytes.length !== job.byteLength) problem = `read ${bytes.length} bytes, expected ${job.byteLength}`;
    break;
  }
  default:
    throw new Error(`unknown mode ${JSON.stringify((job as { mode: unknown }).mode)}`);
}
const seconds = (Bun.nanoseconds() - start) / 1e9;
const peakRssBytes = procStatusBytes("VmHWM");
process.stdout.write(JSON.stringify({ baselineRssBytes, peakRssBytes, seconds, problem }) + "\n");
