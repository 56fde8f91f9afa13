/**
 * STREAM (John D. McCalpin's memory bandwidth benchmark), ported as LLNL UMap ports it: the
 * arrays a, b and c live in three regions, each on its own sharded datastore, sharing one page
 * buffer half their total size, so every kernel pass evicts and writes back. The kernels, the
 * initial values and the closing result check are STREAM's own (checkSTREAMresults, epsilon
 * 1e-13 for doubles).
 *
 *   bun bench/stream.ts [--elements N] [--iterations N] [--page-size BYTES] [--dir DIRECTORY]
 *
 * Prints the best rate of each kernel and the check's verdict; exits 1 if the check fails.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ShardedStore, umap, type Region } from "../src/index.ts";

export interface StreamOptions {
  /** Directory under which the three datastores a, b and c are created (it must not hold them yet). */
  directory: string;
  /** Doubles per array (STREAM_ARRAY_SIZE). */
  elementCount: number;
  /** Passes of the four kernels (NTIMES); the first is not timed, as in STREAM. */
  iterations: number;
  pageSize: number;
  /** Bytes per shard file of each datastore. */
  shardSize: number;
}

export interface StreamResult {
  /** STREAM's check passed: every array's average error is within epsilon of the expected value. */
  passed: boolean;
  /** Average relative errors of a, b and c, as checkSTREAMresults computes them. */
  relativeErrors: { a: number; b: number; c: number };
  /** Best rate of each kernel over the timed passes, MB/s (10^6 bytes, as STREAM reports). */
  bestRateMBps: { copy: number; scale: number; add: number; triad: number };
  /** Sum of a, b and c: a checksum of the work, so it cannot be optimized away. */
  checksum: number;
  /** Evictions across the three regions: the buffer really was too small for the arrays. */
  evictions: number;
  writebacks: number;
}

const SCALAR = 3.0;
/** STREAM's epsilon for 8-byte elements. */
const EPSILON = 1e-13;
const KERNELS = ["copy", "scale", "add", "triad"] as const;
/** Bytes each kernel moves per element (STREAM's bytes[] table). */
const BYTES_PER_ELEMENT = { copy: 16, scale: 16, add: 24, triad: 24 } as const;

export async function runStream(options: StreamOptions): Promise<StreamResult> {
  const { directory, elementCount: n, iterations, pageSize, shardSize } = options;
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`elementCount must be a whole number >= 1, got ${n}`);
  if (!Number.isSafeInteger(iterations) || iterations < 2) throw new RangeError(`iterations must be a whole number >= 2, got ${iterations}`);
  const arrayBytes = n * 8;
  // The buffer all three regions share: half their total, rounded down to whole pages.
  const bufferSize = Math.max(pageSize, Math.floor((3 * arrayBytes) / 2 / pageSize) * pageSize);
  const regions: Region[] = [];
  const stores: ShardedStore[] = [];
  try {
    for (const name of ["a", "b", "c"]) {
      const store = await ShardedStore.create(join(directory, name), { size: arrayBytes, shardSize });
      stores.push(store);
      regions.push(await umap(store, { writable: true, pageSize, bufferSize }));
    }
    const [a, b, c] = regions.map((region) => new Float64Array(region.bytes.buffer, region.bytes.byteOffset, n)) as [Float64Array, Float64Array, Float64Array];

    for (let j = 0; j < n; j++) {
      a[j] = 1.0;
      b[j] = 2.0;
      c[j] = 0.0;
    }
    for (let j = 0; j < n; j++) a[j] = 2.0 * a[j]!;

    const best = { copy: Infinity, scale: Infinity, add: Infinity, triad: Infinity };
    for (let k = 0; k < iterations; k++) {
      const seconds = {} as Record<(typeof KERNELS)[number], number>;
      let started = performance.now();
      for (let j = 0; j < n; j++) c[j] = a[j]!;
      seconds.copy = (performance.now() - started) / 1000;
      started = performance.now();
      for (let j = 0; j < n; j++) b[j] = SCALAR * c[j]!;
      seconds.scale = (performance.now() - started) / 1000;
      started = performance.now();
      for (let j = 0; j < n; j++) c[j] = a[j]! + b[j]!;
      seconds.add = (performance.now() - started) / 1000;
      started = performance.now();
      for (let j = 0; j < n; j++) a[j] = b[j]! + SCALAR * c[j]!;
      seconds.triad = (performance.now() - started) / 1000;
      // STREAM skips the first pass: it includes warm-up effects.
      if (k > 0) for (const kernel of KERNELS) best[kernel] = Math.min(best[kernel], seconds[kernel]);
    }

    // checkSTREAMresults: replay the kernels on scalars, compare the average error.
    let aj = 1.0;
    let bj = 2.0;
    let cj = 0.0;
    aj = 2.0 * aj;
    for (let k = 0; k < iterations; k++) {
      cj = aj;
      bj = SCALAR * cj;
      cj = aj + bj;
      aj = bj + SCALAR * cj;
    }
    let aSumError = 0;
    let bSumError = 0;
    let cSumError = 0;
    let checksum = 0;
    for (let j = 0; j < n; j++) {
      aSumError += Math.abs(a[j]! - aj);
      bSumError += Math.abs(b[j]! - bj);
      cSumError += Math.abs(c[j]! - cj);
      checksum += a[j]! + b[j]! + c[j]!;
    }
    const relativeErrors = { a: Math.abs(aSumError / n / aj), b: Math.abs(bSumError / n / bj), c: Math.abs(cSumError / n / cj) };
    const passed = relativeErrors.a <= EPSILON && relativeErrors.b <= EPSILON && relativeErrors.c <= EPSILON;
    const bestRateMBps = Object.fromEntries(
      KERNELS.map((kernel) => [kernel, (BYTES_PER_ELEMENT[kernel] * n) / 1e6 / best[kernel]]),
    ) as StreamResult["bestRateMBps"];
    const stats = regions.map((region) => region.stats());
    return {
      passed,
      relativeErrors,
      bestRateMBps,
      checksum,
      evictions: stats.reduce((sum, s) => sum + s.evictions, 0),
      writebacks: stats.reduce((sum, s) => sum + s.writebacks, 0),
    };
  } finally {
    for (const region of regions) await region.close();
    for (const store of stores) store.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      elements: { type: "string", default: String(4 * 1024 * 1024) },
      iterations: { type: "string", default: "10" },
      "page-size": { type: "string", default: String(64 * 1024) },
      dir: { type: "string" },
    },
  });
  const elementCount = Number(values.elements);
  const iterations = Number(values.iterations);
  const pageSize = Number(values["page-size"]);
  const directory = values.dir ?? mkdtempSync(join(tmpdir(), "bun-umap-stream-"));
  try {
    const result = await runStream({ directory, elementCount, iterations, pageSize, shardSize: 8 * 1024 * 1024 });
    console.log(`STREAM on three sharded datastores: ${elementCount} doubles per array, ${iterations} passes, pages of ${pageSize} bytes`);
    console.log("Function    Best Rate MB/s");
    for (const kernel of KERNELS) console.log(`${kernel.padEnd(12)}${result.bestRateMBps[kernel].toFixed(1).padStart(14)}`);
    console.log(`evictions ${result.evictions}, write-backs ${result.writebacks}, checksum ${result.checksum}`);
    console.log(result.passed ? "Solution Validates: avg error less than 1.000000e-13 on all three arrays" : `Solution FAILS: relative errors ${JSON.stringify(result.relativeErrors)}`);
    if (!result.passed) process.exitCode = 1;
  } finally {
    if (values.dir === undefined) rmSync(directory, { recursive: true, force: true });
  }
}
