/**
 * s3: a Float64 object on a loopback S3 server (s3rver, started and stopped here), read two ways.
 *
 * - seq: summed front to back, through umap over S3Store; against the same SDK client doing
 *   parallel ranged GETs of the whole object at the same concurrency and range size (the
 *   ceiling: what the server and the client can deliver with no pager in between), Bun's
 *   built-in S3Client doing the same, and an s3fs FUSE mount of the bucket read with Bun.mmap.
 * - random: distinct random 64 KiB blocks, each read (and summed) on its own and timed: umap over
 *   S3Store with 64 KiB pages and chunks, no read-ahead; against one ranged GET per block from
 *   either client, and the s3fs mount.
 *
 * Every run checks its sum against the generator's values. The s3fs mount is made again before
 * each of its runs, so every run starts with nothing of the object cached in the kernel.
 */
import { GetObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { readFileSync } from "node:fs";
import { S3Store, umap } from "../../src/index.ts";
import { KiB, MiB, formatBytes, valueAt, type Float64File } from "../lib/data.ts";
import { target, type Ratio, type Skipped, type SystemResult } from "../lib/report.ts";
import { startS3Server, type S3Server } from "../lib/s3-server.ts";
import { mountS3fs, s3fsUnavailable, type S3fsMount } from "../lib/s3fs.ts";
import { percentile, xorshift32 } from "../lib/stats.ts";
import { gigabytesPerSecond, metricOf, releaseMappings, runSystems, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";
import { scanRegion, sumFloat64 } from "./seq.ts";

const BUCKET = "bench";
const KEY = "float64.bin";
/** S3Store's defaults, set here explicitly: the ceiling's GETs use the same range and concurrency. */
const CHUNK_SIZE = 8 * MiB;
const CONCURRENCY = 4;
const SEQ_PAGE_SIZE = 1 * MiB;
const BLOCK_BYTES = 64 * KiB;
const RANDOM_SEED = 0x53_0bad;
/** USER_HZ: /proc/PID/stat counts CPU time in these on every Linux architecture Bun runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

const SEQ_STORE = "seq: umap S3Store 1 MiB";
const SEQ_SDK = "seq: SDK ranged GETs";
const SEQ_BUN = "seq: Bun.S3Client ranged GETs";
const SEQ_S3FS = "seq: s3fs + Bun.mmap";
const RANDOM_STORE = "random: umap S3Store 64 KiB";
const RANDOM_STORE_READ = "random: S3Store.read, no umap";
const RANDOM_SDK = "random: SDK ranged GET";
const RANDOM_BUN = "random: Bun.S3Client ranged GET";
const RANDOM_S3FS = "random: s3fs + Bun.mmap";

/** Sum of bytes holding Float64 values; a body not 8-byte aligned in its buffer is copied first. */
function sumFloat64Bytes(bytes: Uint8Array): number {
  if (bytes.byteLength % 8 !== 0) throw new Error(`a body of ${bytes.byteLength} bytes is not whole Float64 values`);
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  return sumFloat64(new Float64Array(aligned.buffer, aligned.byteOffset, aligned.byteLength / 8));
}

/** `count` distinct block indices below blockCount, from a fixed seed (a partial Fisher-Yates). */
function randomBlocks(blockCount: number, count: number): number[] {
  const next = xorshift32(RANDOM_SEED);
  const order = Array.from({ length: blockCount }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + (next() % (blockCount - i));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order.slice(0, count);
}

/** Reads the whole object as ranges of CHUNK_SIZE, CONCURRENCY at a time, and sums it. */
async function parallelRanges(byteLength: number, get: (start: number, endExclusive: number) => Promise<Uint8Array>): Promise<number> {
  const rangeCount = Math.ceil(byteLength / CHUNK_SIZE);
  let nextIndex = 0;
  let sum = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let index = nextIndex++; index < rangeCount; index = nextIndex++) {
        const start = index * CHUNK_SIZE;
        const end = Math.min(byteLength, start + CHUNK_SIZE);
        const body = await get(start, end);
        if (body.byteLength !== end - start) throw new Error(`GET bytes=${start}-${end - 1} returned ${body.byteLength} bytes`);
        sum += sumFloat64Bytes(body);
      }
    }),
  );
  return sum;
}

function sdkGet(client: S3Client) {
  return async (start: number, endExclusive: number): Promise<Uint8Array> => {
    const response = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: KEY, Range: `bytes=${start}-${endExclusive - 1}` }));
    return response.Body!.transformToByteArray();
  };
}

function bunGet(client: Bun.S3Client) {
  return (start: number, endExclusive: number): Promise<Uint8Array> => client.file(KEY).slice(start, endExclusive).bytes();
}

/**
 * Runs fn over a Bun.mmap of the path, then collects the mapping: no view of it may outlive fn,
 * or the mount stays busy and cannot be unmounted.
 */
function readMapped<T>(path: string, file: Float64File, fn: (values: Float64Array) => T): T {
  const result = mapAndRun(path, file, fn);
  releaseMappings();
  return result;
}

function mapAndRun<T>(path: string, file: Float64File, fn: (values: Float64Array) => T): T {
  const bytes = Bun.mmap(path, { shared: false });
  return fn(new Float64Array(bytes.buffer, bytes.byteOffset, file.wordCount));
}

/** User + system CPU seconds of a process so far, from /proc (NaN where it cannot be read). */
function processCpuSeconds(pid: number): number {
  try {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

function latencyExtra(latenciesNs: Float64Array): Record<string, number> {
  const list = Array.from(latenciesNs);
  return { p50Us: percentile(list, 0.5) / 1e3, p90Us: percentile(list, 0.9) / 1e3, p99Us: percentile(list, 0.99) / 1e3 };
}

/** Percentiles of the median repeat (by total time), so one noisy repeat does not set them. */
function summarizeLatency(samples: Sample[]): Record<string, number> {
  const sorted = [...samples].sort((a, b) => a.seconds - b.seconds);
  const middle = sorted[(sorted.length - 1) >> 1]!;
  const out: Record<string, number> = {};
  for (const key of ["p50Us", "p90Us", "p99Us"]) if (key in (middle.extra ?? {})) out[key] = Number(middle.extra![key]);
  return out;
}

export const s3: Workload = {
  name: "s3",
  description: "a Float64 object on a loopback S3 server: sequential scan, and random 64 KiB reads",
  async run(context: BenchContext) {
    const byteLength = context.quick ? 16 * MiB : 256 * MiB;
    const bufferSize = context.quick ? 8 * MiB : 64 * MiB;
    const randomBufferSize = 16 * MiB;
    const readCount = context.quick ? 40 : 300;
    const file = context.data.float64File(byteLength);
    const started = await startS3Server("s3rver", BUCKET);
    if (typeof started === "string") throw new Error(started);
    const server: S3Server = started;
    try {
      const uploadStart = Bun.nanoseconds();
      await server.put(KEY, readFileSync(file.path));
      const uploadSeconds = (Bun.nanoseconds() - uploadStart) / 1e9;
      context.progress(`s3: uploaded ${formatBytes(byteLength)} to ${server.endpoint} in ${uploadSeconds.toFixed(2)} s`);
      return await measure(context, server, file, { byteLength, bufferSize, randomBufferSize, readCount, uploadSeconds });
    } finally {
      await server.stop();
    }
  },
};

async function measure(
  context: BenchContext,
  server: S3Server,
  file: Float64File,
  setup: { byteLength: number; bufferSize: number; randomBufferSize: number; readCount: number; uploadSeconds: number },
) {
  const { byteLength, bufferSize, randomBufferSize, readCount } = setup;
  const bunClient = new Bun.S3Client({
    endpoint: server.endpoint,
    accessKeyId: server.credentials.accessKeyId,
    secretAccessKey: server.credentials.secretAccessKey,
    bucket: BUCKET,
    region: server.s3.region,
  });
  const checkSum = (sum: number) => (sum === file.sum ? null : `sum ${sum}, expected ${file.sum}`);
  /**
   * Adds what the run cost around fn: the bytes the server sent, as a multiple of the object (1
   * when each byte went once), its requests, and the CPU seconds of this process (every thread:
   * the reader, the engine, the workers) and of the server process. Two cores bound the sum.
   */
  const withServed = async (fn: () => Promise<Sample>): Promise<Sample> => {
    const before = await server.served();
    const cpuBefore = process.cpuUsage();
    const serverCpuBefore = processCpuSeconds(server.pid);
    const sample = await fn();
    const cpu = process.cpuUsage(cpuBefore);
    const serverCpuAfter = processCpuSeconds(server.pid);
    const after = await server.served();
    return {
      ...sample,
      extra: {
        sentPerObjectByte: (after.getBytes - before.getBytes) / byteLength,
        getRequests: after.requests - before.requests,
        cpuSeconds: (cpu.user + cpu.system) / 1e6,
        serverCpuSeconds: serverCpuAfter - serverCpuBefore,
        // A system's own figures of its timed part (umap's scan without its setup) win.
        ...sample.extra,
      },
    };
  };

  // s3fs: tried once up front, so a machine without FUSE records why instead of failing runs.
  const skipped: Skipped[] = [];
  let mountCount = 0;
  const mount = async (): Promise<S3fsMount> => {
    const mounted = await mountS3fs({
      endpoint: server.endpoint,
      bucket: BUCKET,
      accessKeyId: server.credentials.accessKeyId,
      secretAccessKey: server.credentials.secretAccessKey,
      key: KEY,
      workDir: context.data.path,
      name: String(mountCount++),
    });
    if (typeof mounted === "string") throw new Error(`s3fs: ${mounted}`);
    return mounted;
  };
  let s3fsReason = s3fsUnavailable();
  if (s3fsReason === null) {
    try {
      await (await mount()).unmount();
    } catch (error) {
      s3fsReason = (error as Error).message;
    }
  }
  if (s3fsReason !== null) {
    skipped.push({ name: SEQ_S3FS, reason: s3fsReason }, { name: RANDOM_S3FS, reason: s3fsReason });
    context.progress(`s3: s3fs not run: ${s3fsReason}`);
  }

  const throughput = gigabytesPerSecond(byteLength);
  const seqSystems: SystemSpec[] = [
    {
      name: SEQ_STORE,
      run: () =>
        withServed(async () => {
          const setupStart = Bun.nanoseconds();
          const store = new S3Store({ bucket: BUCKET, key: KEY, ...server.s3, chunkSize: CHUNK_SIZE, concurrency: CONCURRENCY });
          const region = await umap(store, { pageSize: SEQ_PAGE_SIZE, bufferSize });
          const serverCpuBefore = processCpuSeconds(server.pid);
          let serverCpuSeconds = 0;
          const { sum, seconds, cpuSeconds, startedNs, closeMs, stats } = await scanRegion(region, file.wordCount, () => {
            serverCpuSeconds = processCpuSeconds(server.pid) - serverCpuBefore;
          });
          return {
            seconds,
            problem: checkSum(sum),
            extra: {
              setupMs: (startedNs - setupStart) / 1e6,
              closeMs,
              cpuSeconds,
              serverCpuSeconds,
              faults: stats.faults,
              fills: stats.fills,
              fillRequests: stats.fillRequests,
              readAheadPages: stats.readAheadPages,
              evictions: stats.evictions,
            },
          };
        }),
      metric: throughput,
    },
    {
      name: SEQ_SDK,
      run: () =>
        withServed(async () => {
          const start = Bun.nanoseconds();
          const sum = await parallelRanges(byteLength, sdkGet(server.client));
          return { seconds: (Bun.nanoseconds() - start) / 1e9, problem: checkSum(sum) };
        }),
      metric: throughput,
    },
    {
      name: SEQ_BUN,
      run: () =>
        withServed(async () => {
          const start = Bun.nanoseconds();
          const sum = await parallelRanges(byteLength, bunGet(bunClient));
          return { seconds: (Bun.nanoseconds() - start) / 1e9, problem: checkSum(sum) };
        }),
      metric: throughput,
    },
  ];
  if (s3fsReason === null) {
    seqSystems.push({
      name: SEQ_S3FS,
      run: () =>
        withServed(async () => {
          const setupStart = Bun.nanoseconds();
          const mounted = await mount();
          try {
            const scanStart = Bun.nanoseconds();
            const sum = readMapped(`${mounted.path}/${KEY}`, file, sumFloat64);
            const seconds = (Bun.nanoseconds() - scanStart) / 1e9;
            return { seconds, problem: checkSum(sum), extra: { setupMs: (scanStart - setupStart) / 1e6 } };
          } finally {
            await mounted.unmount();
          }
        }),
      metric: throughput,
    });
  }

  // Random 64 KiB blocks, every one distinct, so each read misses whatever a system caches.
  const blockCount = byteLength / BLOCK_BYTES;
  const blocks = randomBlocks(blockCount, readCount);
  const wordsPerBlock = BLOCK_BYTES / 8;
  let randomExpected = 0;
  for (const block of blocks) for (let i = 0; i < wordsPerBlock; i++) randomExpected += valueAt(block * wordsPerBlock + i, file.seed);
  const checkRandom = (sum: number) => (sum === randomExpected ? null : `sum ${sum}, expected ${randomExpected}`);
  const latenciesNs = new Float64Array(readCount);
  const reads = (medianSeconds: number): SystemResult["metric"] => ({ name: "reads", unit: "reads/s", value: readCount / medianSeconds, higherIsBetter: true });
  /** Times each block's read on its own; read() returns the block's sum. */
  const timedBlocks = async (read: (block: number) => Promise<number>) => {
    let sum = 0;
    const start = Bun.nanoseconds();
    for (let i = 0; i < blocks.length; i++) {
      const before = Bun.nanoseconds();
      sum += await read(blocks[i]!);
      latenciesNs[i] = Bun.nanoseconds() - before;
    }
    return { sum, seconds: (Bun.nanoseconds() - start) / 1e9 };
  };
  /** The same for mapped memory: no await between reads, as an application would read it. */
  const timedBlocksSync = (values: Float64Array) => {
    let sum = 0;
    const start = Bun.nanoseconds();
    for (let i = 0; i < blocks.length; i++) {
      const before = Bun.nanoseconds();
      const block = blocks[i]!;
      sum += sumFloat64(values.subarray(block * wordsPerBlock, (block + 1) * wordsPerBlock));
      latenciesNs[i] = Bun.nanoseconds() - before;
    }
    return { sum, seconds: (Bun.nanoseconds() - start) / 1e9 };
  };
  const getBlocks = async (get: (start: number, endExclusive: number) => Promise<Uint8Array>): Promise<Sample> => {
    const { sum, seconds } = await timedBlocks(async (block) => sumFloat64Bytes(await get(block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES)));
    return { seconds, problem: checkRandom(sum), extra: latencyExtra(latenciesNs) };
  };
  const randomSystems: SystemSpec[] = [
    {
      name: RANDOM_STORE,
      async run() {
        // Chunks of one block: a miss fetches what it needs, and no read-ahead fetches more.
        const store = new S3Store({ bucket: BUCKET, key: KEY, ...server.s3, chunkSize: BLOCK_BYTES, concurrency: CONCURRENCY });
        const region = await umap(store, { pageSize: BLOCK_BYTES, bufferSize: randomBufferSize, readAhead: 0 });
        try {
          const values = new Float64Array(region.bytes.buffer, region.bytes.byteOffset, file.wordCount);
          const cpuBefore = process.cpuUsage();
          const serverCpuBefore = processCpuSeconds(server.pid);
          const { sum, seconds } = timedBlocksSync(values);
          const cpu = process.cpuUsage(cpuBefore);
          const serverCpuSeconds = processCpuSeconds(server.pid) - serverCpuBefore;
          const stats = region.stats();
          return {
            seconds,
            problem: checkRandom(sum),
            extra: {
              ...latencyExtra(latenciesNs),
              cpuSeconds: (cpu.user + cpu.system) / 1e6,
              serverCpuSeconds,
              faults: stats.faults,
              fills: stats.fills,
              fillRequests: stats.fillRequests,
              evictions: stats.evictions,
            },
          };
        } finally {
          await region.close();
        }
      },
      metric: reads,
      summarize: summarizeLatency,
    },
    {
      // The store alone, called on this thread: what S3Store costs a read without the pager.
      name: RANDOM_STORE_READ,
      async run() {
        const store = new S3Store({ bucket: BUCKET, key: KEY, ...server.s3, chunkSize: BLOCK_BYTES, concurrency: CONCURRENCY });
        await store.open();
        const target = new Uint8Array(BLOCK_BYTES);
        try {
          return await getBlocks(async (start) => (await store.read(start, target), target));
        } finally {
          await store.close();
        }
      },
      metric: reads,
      summarize: summarizeLatency,
    },
    { name: RANDOM_SDK, run: () => getBlocks(sdkGet(server.client)), metric: reads, summarize: summarizeLatency },
    { name: RANDOM_BUN, run: () => getBlocks(bunGet(bunClient)), metric: reads, summarize: summarizeLatency },
  ];
  if (s3fsReason === null) {
    randomSystems.push({
      name: RANDOM_S3FS,
      async run() {
        const mounted = await mount();
        try {
          const { sum, seconds } = readMapped(`${mounted.path}/${KEY}`, file, timedBlocksSync);
          return { seconds, problem: checkRandom(sum), extra: latencyExtra(latenciesNs) };
        } finally {
          await mounted.unmount();
        }
      },
      metric: reads,
      summarize: summarizeLatency,
    });
  }

  // The random systems also report what the server sent: s3fs and the kernel fetch ahead of
  // the block asked for, the others exactly the block.
  for (const system of randomSystems) {
    const run = system.run.bind(system);
    system.run = (repeatIndex) => withServed(() => run(repeatIndex));
  }
  const seq = await runSystems(context, "s3", seqSystems);
  const random = await runSystems(context, "s3", randomSystems);
  const systems = [...seq.systems, ...random.systems];
  const ceiling = metricOf(systems, SEQ_SDK);
  const ratios: Ratio[] = seq.systems.filter((s) => s.name !== SEQ_SDK).map((s) => ({ name: `${s.name} / ${SEQ_SDK}`, value: s.metric.value / ceiling }));
  const p50Of = (name: string) => Number(systems.find((s) => s.name === name)?.extra.p50Us ?? Number.NaN);
  const getP50 = p50Of(RANDOM_SDK);
  for (const s of random.systems) {
    if (s.name !== RANDOM_SDK) ratios.push({ name: `${s.name} / ${RANDOM_SDK} (p50 latency)`, value: p50Of(s.name) / getP50 });
  }
  return {
    parameters: {
      byteLength,
      server: server.kind,
      chunkSize: CHUNK_SIZE,
      concurrency: CONCURRENCY,
      seqPageSize: SEQ_PAGE_SIZE,
      bufferSize,
      blockBytes: BLOCK_BYTES,
      randomBufferSize,
      readCount,
      readAhead: "adaptive (seq), 0 (random)",
      seed: RANDOM_SEED,
      repeats: context.repeats,
      uploadSeconds: setup.uploadSeconds,
      s3fs: s3fsReason === null ? "mounted (s3fs-fuse, default options), again before each run" : `not run: ${s3fsReason}`,
    },
    systems,
    ratios,
    targets: [
      target(`${SEQ_STORE} vs ${SEQ_SDK} (the ceiling)`, metricOf(systems, SEQ_STORE) / ceiling, "at least", 0.8),
      target(`${RANDOM_STORE} p50 / ${RANDOM_SDK} p50`, p50Of(RANDOM_STORE) / getP50, "at most", 1.5),
    ],
    checks: [...seq.checks, ...random.checks],
    skipped,
    notes: [
      `The ceiling is the AWS SDK client S3Store uses, fetching the whole object as ${formatBytes(CHUNK_SIZE)} ranged GETs, ${CONCURRENCY} in flight, and summing each body: what S3Store's chunk size and concurrency allow with no pager in between.`,
      "Timed for umap: the scan only; umap() (HeadObject, starting the engine and its workers) is setupMs. The GET systems have no setup. s3fs: the mount is setupMs, the scan through Bun.mmap is timed.",
      "Random: each read is one distinct 64 KiB block, read and summed, timed on its own; latencies are of the median repeat. \"S3Store.read, no umap\" calls the same store on the main thread, to separate the store's cost from the pager's.",
      "extra: sentPerObjectByte is the GET body bytes s3rver sent during a run over the object's size; cpuSeconds is this process's CPU time (all threads) and serverCpuSeconds s3rver's, over the timed part for umap (seq and random) and over the whole run for the others.",
    ],
  };
}
