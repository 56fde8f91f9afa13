/**
 * The main job: maps a real file with a page buffer much smaller than the file, computes SHA-256
 * by reading through the mapping, and checks it against SHA-256 of the file read plainly.
 *
 *   bun bench/demo.ts [FILE] [--buffer-size BYTES] [--page-size BYTES]
 *
 * Without a path it maps the Bun executable that `npm install` put in node_modules (~100 MB).
 * Then it copies the file into a sharded datastore (ShardedStore writes, in a temporary
 * directory), maps that read-only through the same small buffer and hashes it again; packs it
 * with Lz4Store (bench/demo-lz4.ts), maps the packed copy, hashes it and prints the compression
 * ratio. Last it uploads the file to S3 (a loopback server the demo starts and stops, or the
 * service S3_ENDPOINT names: see bench/demo-s3.ts), maps the object through S3Store and hashes it
 * again. Exits 1 if any digest differs.
 */
import { closeSync, mkdtempSync, openSync, readdirSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ShardedStore, umap, UmapError, type Region } from "../src/index.ts";
import { demoLz4 } from "./demo-lz4.ts";
import { demoS3 } from "./demo-s3.ts";

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4 * MiB;

const USAGE = `usage: bun bench/demo.ts [FILE] [--buffer-size BYTES] [--page-size BYTES] [--shard-size BYTES]

Maps FILE (default: the Bun executable, ~100 MB) through a small page buffer, hashes it through
the mapping and plainly, and checks that the digests match. Then copies FILE into a sharded
datastore of --shard-size shards (default 8m) in a temporary directory, maps that read-only and
checks its digest too. Sizes accept k, m and g suffixes.`;

/** "16m" -> 16777216; exits with the usage on anything else. */
function parseSize(name: string, text: string): number {
  const match = /^(\d+)([kmg]?)i?b?$/i.exec(text.trim());
  if (!match) usageError(`--${name} must be a size in bytes such as 65536 or 64k, got ${JSON.stringify(text)}`);
  const scale = { "": 1, k: 1024, m: MiB, g: 1024 * MiB }[match[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  return Number(match[1]) * scale;
}

function usageError(message: string): never {
  console.error(`demo: ${message}\n\n${USAGE}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    args: Bun.argv.slice(2),
    allowPositionals: true,
    options: {
      "buffer-size": { type: "string", default: String(16 * MiB) },
      "page-size": { type: "string" },
      "shard-size": { type: "string", default: String(8 * MiB) },
      help: { type: "boolean", short: "h" },
    },
  });
} catch (error) {
  usageError((error as Error).message);
}
const { values, positionals } = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
if (positionals.length > 1) usageError(`one file at a time, got ${positionals.length}`);
const path = positionals[0] ?? process.execPath;
const bufferSize = parseSize("buffer-size", values["buffer-size"]);
const pageSize = values["page-size"] === undefined ? undefined : parseSize("page-size", values["page-size"]);
const shardSize = parseSize("shard-size", values["shard-size"]);
if (shardSize === 0) usageError("--shard-size must be at least 1 byte");

function formatBytes(bytes: number): string {
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  return bytes >= 1024 ? `${(bytes / 1024).toFixed(0)} KiB` : `${bytes} B`;
}

/** A progress bar on stderr when it is a terminal; nothing otherwise. */
function progress(label: string, done: number, total: number): void {
  if (!process.stderr.isTTY) return;
  const width = 30;
  const filled = Math.round((done / total) * width);
  process.stderr.write(`\r${label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${((done / total) * 100).toFixed(0)}%`);
  if (done === total) process.stderr.write("\n");
}

function hashThroughMapping(region: Region): { digest: string; seconds: number } {
  const hasher = new Bun.CryptoHasher("sha256");
  const started = performance.now();
  for (let offset = 0; offset < region.byteLength; offset += CHUNK_BYTES) {
    const length = Math.min(CHUNK_BYTES, region.byteLength - offset);
    hasher.update(region.view(offset, length));
    progress("umap ", offset + length, region.byteLength);
  }
  return { digest: hasher.digest("hex"), seconds: (performance.now() - started) / 1000 };
}

function hashPlainly(file: string): { digest: string; seconds: number } {
  const hasher = new Bun.CryptoHasher("sha256");
  const chunk = new Uint8Array(CHUNK_BYTES);
  const started = performance.now();
  const fd = openSync(file, "r");
  try {
    for (let got; (got = readSync(fd, chunk, 0, chunk.length, null)) > 0; ) hasher.update(chunk.subarray(0, got));
  } finally {
    closeSync(fd);
  }
  return { digest: hasher.digest("hex"), seconds: (performance.now() - started) / 1000 };
}

let region: Region;
try {
  region = await umap(path, { bufferSize, ...(pageSize === undefined ? {} : { pageSize }) });
} catch (error) {
  // The library's errors name the problem: show them without a stack.
  if (!(error instanceof UmapError)) throw error;
  console.error(`demo: ${error.code}: ${error.message}`);
  process.exit(2);
}
console.log(`mapped   ${path}`);
console.log(`         ${formatBytes(region.byteLength)} in pages of ${formatBytes(region.pageSize)}, buffer ${formatBytes(bufferSize)}`);

const mapped = hashThroughMapping(region);
const plain = hashPlainly(path);
const stats = region.stats();
const gbPerSecond = (seconds: number) => (region.byteLength / seconds / 1e9).toFixed(2);

console.log(`umap     sha256 ${mapped.digest}  ${gbPerSecond(mapped.seconds)} GB/s`);
console.log(`plain    sha256 ${plain.digest}  ${gbPerSecond(plain.seconds)} GB/s`);
console.log(
  `stats    faults ${stats.faults}, fills ${stats.fills} pages in ${stats.fillRequests} reads, ` +
    `read-ahead ${stats.readAheadPages} pages, evictions ${stats.evictions}, ` +
    `resident ${stats.residentPages} pages (${formatBytes(stats.residentPages * region.pageSize)})`,
);
if (mapped.digest !== plain.digest) {
  console.error("MISMATCH: the bytes read through the mapping differ from the file");
  process.exitCode = 1;
} else {
  console.log("match    the mapping reads the file exactly");
}
await region.close();

/** Copies file into a new datastore in directory with ShardedStore writes; returns the seconds taken. */
async function copyToDatastore(file: string, directory: string, byteLength: number): Promise<number> {
  const started = performance.now();
  const store = await ShardedStore.create(directory, { size: byteLength, shardSize });
  const chunk = new Uint8Array(CHUNK_BYTES);
  const fd = openSync(file, "r");
  try {
    for (let offset = 0; offset < byteLength; ) {
      const got = readSync(fd, chunk, 0, Math.min(chunk.length, byteLength - offset), offset);
      if (got === 0) throw new Error(`${file} ended at byte ${offset}, before its ${byteLength} bytes: did it change?`);
      store.write(offset, chunk.subarray(0, got));
      offset += got;
      progress("shard", offset, byteLength);
    }
    store.flush();
  } finally {
    closeSync(fd);
    store.close();
  }
  return (performance.now() - started) / 1000;
}

const datastore = mkdtempSync(join(tmpdir(), "bun-umap-demo-"));
try {
  const copySeconds = await copyToDatastore(path, join(datastore, "copy"), region.byteLength);
  const shardCount = readdirSync(join(datastore, "copy")).filter((name) => name.startsWith("shard-")).length;
  const sharded = await ShardedStore.open(join(datastore, "copy"));
  console.log(`sharded  ${shardCount} shards of ${formatBytes(shardSize)} written in ${copySeconds.toFixed(2)} s, mapped read-only`);
  const shardedRegion = await umap(sharded, { bufferSize, ...(pageSize === undefined ? {} : { pageSize }) });
  const viaShards = hashThroughMapping(shardedRegion);
  console.log(`sharded  sha256 ${viaShards.digest}  ${gbPerSecond(viaShards.seconds)} GB/s`);
  await shardedRegion.close();
  sharded.close();
  if (viaShards.digest !== plain.digest) {
    console.error("MISMATCH: the bytes read through the sharded datastore differ from the file");
    process.exitCode = 1;
  } else {
    console.log("match    the sharded copy reads the file exactly");
  }
} catch (error) {
  if (!(error instanceof UmapError)) throw error;
  console.error(`demo: ${error.code}: ${error.message}`);
  process.exitCode = 2;
} finally {
  rmSync(datastore, { recursive: true, force: true });
}

// The packed LZ4 copy: packed, mapped through the same buffer, checked against the same digest.
try {
  const lz4 = await demoLz4(path, { bufferSize, ...(pageSize === undefined ? {} : { pageSize }), expectedDigest: plain.digest });
  if (!lz4.matched) process.exitCode = 1;
} catch (error) {
  if (!(error instanceof UmapError)) throw error;
  console.error(`demo: ${error.code}: ${error.message}`);
  process.exitCode = 2;
}

// S3: the same file as an object, through S3Store (bench/demo-s3.ts).
if (!(await demoS3({ path, expectedDigest: plain.digest, bufferSize, ...(pageSize === undefined ? {} : { pageSize }), hash: hashThroughMapping }))) {
  process.exitCode = 1;
}
