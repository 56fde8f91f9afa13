/**
 * ShardedStore beyond the conformance suite: sparse datastores (the done-when checks),
 * concatenations of real files, every bad input as a typed error naming the file, crash
 * leftovers, workers racing to create the same shards, and the bound on open descriptors.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { ErrorCode, ShardedStore, umap, UmapError } from "../src/index.ts";
import { checkPattern, fillPattern, KiB, MiB, tempDir, writePatternFile, rejection, thrown } from "./helpers.ts";

const dir = tempDir();
afterAll(() => dir.remove());
let count = 0;
/** A new path in the test directory (nothing is made there). */
const freshPath = (name: string) => join(dir.path, `${name}-${count++}`);

/** Bytes allocated on disk for every file in a directory (st_blocks counts 512-byte units). */
function allocatedBytes(directory: string): number {
  return readdirSync(directory).reduce((sum, name) => sum + statSync(join(directory, name)).blocks * 512, 0);
}

const shardFiles = (directory: string) => readdirSync(directory).filter((name) => name.startsWith("shard-")).sort();
const shardFile = (directory: string, shardIndex: number) => join(directory, `shard-${String(shardIndex).padStart(8, "0")}.bin`);

/** A datastore written directly in the documented format (no fsyncs: fast for many shards). */
function writeDatastore(directory: string, manifest: Record<string, unknown>): void {
  mkdirSync(directory, { recursive: true });
  writeFileSync(join(directory, "manifest.json"), JSON.stringify(manifest));
}

describe("sparse datastores", () => {
  test("48 MiB in 8 MiB shards, written only in its first and last MiB: two shards, little disk, reopened read-only", async () => {
    const directory = freshPath("sparse");
    const size = 48 * MiB;
    const store = await ShardedStore.create(directory, { size, shardSize: 8 * MiB });
    expect(store.shardCount).toBe(6);
    const region = await umap(store, { writable: true, pageSize: 64 * KiB, bufferSize: 4 * MiB });
    fillPattern(region.view(0, MiB), 0);
    fillPattern(region.view(size - MiB, MiB), size - MiB);
    await region.close();
    store.close();

    expect(shardFiles(directory)).toEqual(["shard-00000000.bin", "shard-00000005.bin"]);
    expect(statSync(shardFile(directory, 0)).size).toBe(8 * MiB);
    // 2 MiB of data, plus the manifest and file-system slack: far below 48 MiB.
    const allocated = allocatedBytes(directory);
    expect(allocated).toBeGreaterThanOrEqual(2 * MiB);
    expect(allocated).toBeLessThan(4 * MiB);

    const reopened = await ShardedStore.open(directory);
    expect(reopened.writable).toBe(false);
    await using readOnly = await umap(reopened, { pageSize: 64 * KiB, bufferSize: 8 * MiB });
    expect(readOnly.byteLength).toBe(size);
    expect(checkPattern(readOnly.view(0, MiB), 0, readOnly.pageSize)).toBeNull();
    expect(checkPattern(readOnly.view(size - MiB, MiB), size - MiB, readOnly.pageSize)).toBeNull();
    let nonZero = 0;
    for (let offset = MiB; offset < size - MiB; offset += MiB) {
      const window = readOnly.view(offset, MiB);
      for (let i = 0; i < window.length; i += 8) nonZero += window[i]! | window[i + 7]!;
    }
    expect(nonZero).toBe(0);
    expect(await rejection(() => umap(reopened, { writable: true }))).toHaveProperty("code", ErrorCode.UNSUPPORTED);
    await readOnly.close();
    reopened.close();
    // Reading never creates a shard.
    expect(shardFiles(directory)).toEqual(["shard-00000000.bin", "shard-00000005.bin"]);
  });

  test("writing zeros to a shard never written creates nothing; a write across shards creates both", async () => {
    const directory = freshPath("zeros");
    const store = await ShardedStore.create(directory, { size: 10 * KiB, shardSize: 4 * KiB });
    store.write(0, new Uint8Array(10 * KiB));
    expect(shardFiles(directory)).toEqual([]);
    const bytes = new Uint8Array(100).fill(7);
    store.write(4 * KiB - 50, bytes);
    expect(shardFiles(directory)).toEqual(["shard-00000000.bin", "shard-00000001.bin"]);
    // The last shard holds the rest: 2 KiB.
    store.write(10 * KiB - 1, new Uint8Array([9]));
    expect(statSync(shardFile(directory, 2)).size).toBe(2 * KiB);
    const back = new Uint8Array(10 * KiB);
    store.read(0, back);
    const expected = new Uint8Array(10 * KiB);
    expected.fill(7, 4 * KiB - 50, 4 * KiB + 50);
    expected[10 * KiB - 1] = 9;
    expect(Buffer.compare(back, expected)).toBe(0);
    store.close();
    expect(thrown(() => store.read(0, back)).code).toBe(ErrorCode.CLOSED);
    expect(thrown(() => store.write(0, bytes)).code).toBe(ErrorCode.CLOSED);
    const manifest = JSON.parse(readFileSync(join(directory, "manifest.json"), "utf8"));
    expect(manifest).toEqual({ format: "bun-umap-sharded", version: 1, size: 10 * KiB, shardSize: 4 * KiB, shardName: "shard-{index}.bin" });
  });
});

describe("concat", () => {
  test("real files of different sizes hash equal to their concatenation, and reads across each boundary are split right", async () => {
    const pattern = freshPath("pattern");
    writePatternFile(pattern, 3 * MiB + 5);
    const empty = freshPath("empty");
    writeFileSync(empty, "");
    const paths = [resolve("csrc/umap.c"), pattern, empty, resolve("package.json"), resolve("README.md")];
    const whole = Buffer.concat(paths.map((path) => readFileSync(path)));
    const store = await ShardedStore.concat(paths);
    expect(store.size).toBe(whole.length);
    expect(store.writable).toBe(false);
    expect(store.shardCount).toBe(paths.length);

    // Straight through the store: ranges around every boundary.
    let boundary = 0;
    for (const path of paths) {
      boundary += statSync(path).size;
      const from = Math.max(0, boundary - 3);
      const to = Math.min(whole.length, boundary + 3);
      const bytes = new Uint8Array(to - from);
      store.read(from, bytes);
      expect(Buffer.compare(bytes, whole.subarray(from, to))).toBe(0);
    }
    // A read that spans every file at once.
    const all = new Uint8Array(whole.length);
    store.read(0, all);
    expect(Buffer.compare(all, whole)).toBe(0);

    await using region = await umap(store, { pageSize: 4 * KiB, bufferSize: 1 * MiB });
    const hasher = new Bun.CryptoHasher("sha256");
    for (let offset = 0; offset < region.byteLength; offset += 256 * KiB) {
      hasher.update(region.view(offset, Math.min(256 * KiB, region.byteLength - offset)));
    }
    expect(hasher.digest("hex")).toBe(new Bun.CryptoHasher("sha256").update(whole).digest("hex"));
    expect(region.stats().evictions).toBeGreaterThan(0);
    expect(thrown(() => store.write(0, new Uint8Array(1))).code).toBe(ErrorCode.UNSUPPORTED);
    expect(await rejection(() => umap(store, { writable: true }))).toHaveProperty("code", ErrorCode.UNSUPPORTED);
    await region.close();
    store.close();
  });

  test("a file that shrinks after concat() fails its reads with ERR_UMAP_STORE naming it", async () => {
    const first = freshPath("first");
    const second = freshPath("second");
    writePatternFile(first, 8 * KiB);
    writePatternFile(second, 8 * KiB);
    const store = await ShardedStore.concat([first, second]);
    truncateSync(second, 4 * KiB);
    const error = thrown(() => store.read(8 * KiB, new Uint8Array(16)));
    expect(error.code).toBe(ErrorCode.STORE);
    expect(error.message).toContain(second);
    // The first file is still fine.
    const bytes = new Uint8Array(16);
    store.read(0, bytes);
    expect(checkPattern(bytes, 0, 4096)).toBeNull();
    store.close();
  });

  test("bad paths: none, a missing file, a directory, not a string", async () => {
    const file = freshPath("ok");
    writeFileSync(file, "x");
    const missing = freshPath("missing");
    expect((await rejection(() => ShardedStore.concat([]))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect((await rejection(() => ShardedStore.concat("a" as unknown as string[]))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    const notFound = await rejection(() => ShardedStore.concat([file, missing]));
    expect(notFound.code).toBe(ErrorCode.NOT_FOUND);
    expect(notFound.message).toContain(missing);
    const directory = await rejection(() => ShardedStore.concat([dir.path]));
    expect(directory.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(directory.message).toContain(dir.path);
    expect((await rejection(() => ShardedStore.concat([file, 3 as unknown as string]))).message).toContain("paths[1]");
    expect((await rejection(() => ShardedStore.concat([file], { maxOpenFiles: 0 }))).message).toContain("maxOpenFiles");
  });
});

describe("bad datastores: a typed error naming the file", () => {
  const valid = { format: "bun-umap-sharded", version: 1, size: 64 * KiB, shardSize: 16 * KiB, shardName: "shard-{index}.bin" };

  async function openError(manifest: unknown, extra?: (directory: string) => void): Promise<UmapError> {
    const directory = freshPath("bad");
    mkdirSync(directory);
    if (manifest !== undefined) writeFileSync(join(directory, "manifest.json"), typeof manifest === "string" ? manifest : JSON.stringify(manifest));
    extra?.(directory);
    const error = await rejection(() => ShardedStore.open(directory));
    expect(error.message).toContain(directory);
    return error;
  }

  test("a missing manifest or directory is ERR_UMAP_NOT_FOUND", async () => {
    const error = await openError(undefined);
    expect(error.code).toBe(ErrorCode.NOT_FOUND);
    expect(error.message).toContain("manifest.json");
    expect((await rejection(() => ShardedStore.open(freshPath("nowhere")))).code).toBe(ErrorCode.NOT_FOUND);
  });

  test("a malformed manifest is ERR_UMAP_CORRUPT", async () => {
    const cases: unknown[] = [
      "{ not json",
      "[1, 2]",
      "null",
      { ...valid, format: "something-else" },
      { ...valid, version: "1" },
      { ...valid, version: 0 },
      { ...valid, size: -1 },
      { ...valid, size: 1.5 },
      { ...valid, shardSize: 0 },
      { ...valid, shardName: 7 },
      { ...valid, size: undefined },
      { ...valid, size: 10 ** 12, shardSize: 1 },
    ];
    for (const manifest of cases) {
      const error = await openError(manifest);
      expect(`${JSON.stringify(manifest)}: ${error.code}`).toBe(`${JSON.stringify(manifest)}: ${ErrorCode.CORRUPT}`);
      expect(error.message).toContain("manifest.json");
    }
  });

  test("a manifest of an unknown version is ERR_UMAP_UNSUPPORTED", async () => {
    const error = await openError({ ...valid, version: 2 });
    expect(error.code).toBe(ErrorCode.UNSUPPORTED);
    expect(error.message).toContain("version 2");
  });

  test("shard names that would resolve outside the directory (or are otherwise unsafe) are ERR_UMAP_CORRUPT", async () => {
    const names = ["../escape-{index}", "/etc/{index}", "sub/{index}.bin", "..\\{index}", ".{index}", "..{index}", "{index}-{index}", "no-index.bin", "a\0{index}", `${"x".repeat(250)}{index}`];
    for (const shardName of names) {
      const error = await openError({ ...valid, shardName });
      expect(`${JSON.stringify(shardName)}: ${error.code}`).toBe(`${JSON.stringify(shardName)}: ${ErrorCode.CORRUPT}`);
      expect(error.message).toContain("shardName");
    }
    // A name without a prefix is fine: only the path is at stake.
    const directory = freshPath("bare-names");
    writeDatastore(directory, { ...valid, shardName: "{index}" });
    writeFileSync(join(directory, "00000001"), new Uint8Array(16 * KiB).fill(3));
    const store = await ShardedStore.open(directory);
    const bytes = new Uint8Array(2);
    store.read(16 * KiB - 1, bytes);
    expect([...bytes]).toEqual([0, 3]);
    store.close();
  });

  test("a shard of the wrong size, past the last shard, a link or a directory is ERR_UMAP_CORRUPT naming it", async () => {
    const cases: [string, (directory: string) => void][] = [
      ["shard-00000001.bin", (d) => writeFileSync(join(d, "shard-00000001.bin"), new Uint8Array(16 * KiB - 1))],
      ["shard-00000004.bin", (d) => writeFileSync(join(d, "shard-00000004.bin"), new Uint8Array(16 * KiB))],
      ["shard-00000002.bin", (d) => symlinkSync("/etc/hostname", join(d, "shard-00000002.bin"))],
      ["shard-00000003.bin", (d) => mkdirSync(join(d, "shard-00000003.bin"))],
    ];
    for (const [name, make] of cases) {
      const error = await openError(valid, make);
      expect(`${name}: ${error.code}`).toBe(`${name}: ${ErrorCode.CORRUPT}`);
      expect(error.message).toContain(name);
    }
  });

  test("a shard that changes size while open fails its reads with ERR_UMAP_CORRUPT naming it", async () => {
    const directory = freshPath("shrinking");
    const store = await ShardedStore.create(directory, { size: 64 * KiB, shardSize: 16 * KiB });
    const reader = await ShardedStore.open(directory);
    store.write(20 * KiB, new Uint8Array(8).fill(1));
    truncateSync(shardFile(directory, 1), 8 * KiB);
    const error = thrown(() => reader.read(16 * KiB, new Uint8Array(8)));
    expect(error.code).toBe(ErrorCode.CORRUPT);
    expect(error.message).toContain("shard-00000001.bin");
    store.close();
    reader.close();
  });

  test("create refuses an existing datastore, a non-empty directory, a file, and bad sizes", async () => {
    const directory = freshPath("exists");
    (await ShardedStore.create(directory, { size: 4096, shardSize: 4096 })).close();
    const again = await rejection(() => ShardedStore.create(directory, { size: 4096, shardSize: 4096 }));
    expect(again.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(again.message).toContain(join(directory, "manifest.json"));

    const busy = freshPath("busy");
    mkdirSync(busy);
    writeFileSync(join(busy, "notes.txt"), "mine");
    const notEmpty = await rejection(() => ShardedStore.create(busy, { size: 4096, shardSize: 4096 }));
    expect(notEmpty.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(notEmpty.message).toContain(busy);

    const file = freshPath("file");
    writeFileSync(file, "x");
    expect((await rejection(() => ShardedStore.create(file, { size: 4096, shardSize: 4096 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);

    const bad: [Record<string, unknown>, string][] = [
      [{ size: 0, shardSize: 4096 }, "size"],
      [{ size: 4096, shardSize: -1 }, "shardSize"],
      [{ size: "4096", shardSize: 4096 }, "size"],
      [{ size: 4096 }, "shardSize"],
      [{ size: 10 ** 12, shardSize: 1 }, "shards"],
      [{ size: 4096, shardSize: 4096, maxOpenFiles: 0 }, "maxOpenFiles"],
    ];
    for (const [options, named] of bad) {
      const error = await rejection(() => ShardedStore.create(freshPath("sizes"), options as { size: number; shardSize: number }));
      expect(`${JSON.stringify(options)}: ${error.code}`).toBe(`${JSON.stringify(options)}: ${ErrorCode.INVALID_ARGUMENT}`);
      expect(error.message).toContain(named);
    }
    expect((await rejection(() => ShardedStore.create(freshPath("none"), undefined as never))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect((await rejection(() => ShardedStore.open(directory, { writable: "yes" as never }))).message).toContain("writable");
  });

  test("S3-only options on a local directory, and a malformed s3:// location, are ERR_UMAP_INVALID_ARGUMENT", async () => {
    const local = await rejection(() => ShardedStore.open(freshPath("local"), { s3: { region: "x" } }));
    expect(local.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(local.message).toContain("option s3");
    expect((await rejection(() => ShardedStore.create(freshPath("local"), { size: 4096, shardSize: 4096, leaseTimeMs: 5000 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    const malformed = await rejection(() => ShardedStore.open("s3://Not_A_Bucket!/prefix"));
    expect(malformed.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(malformed.message).toContain("Not_A_Bucket!");
  });
});

describe("crash safety", () => {
  test("leftovers of an interrupted shard or manifest write never open as valid", async () => {
    // A crash while the manifest was being written leaves only its temporary file: no datastore.
    const interrupted = freshPath("interrupted");
    mkdirSync(interrupted);
    writeFileSync(join(interrupted, ".manifest.json.tmp-99-0-0"), '{"format": "bun-umap-sha');
    expect((await rejection(() => ShardedStore.open(interrupted))).code).toBe(ErrorCode.NOT_FOUND);

    // A crash while shard 1 was being created leaves a half-written temporary: the shard reads
    // as never written, and the next write creates it properly.
    const directory = freshPath("half-shard");
    (await ShardedStore.create(directory, { size: 64 * KiB, shardSize: 16 * KiB })).close();
    writeFileSync(join(directory, ".shard-00000001.bin.tmp-99-0-0"), new Uint8Array(5000).fill(0xff));
    const store = await ShardedStore.open(directory, { writable: true });
    const bytes = new Uint8Array(16 * KiB);
    store.read(16 * KiB, bytes);
    expect(bytes.reduce((sum, byte) => sum + byte, 0)).toBe(0);
    store.write(16 * KiB + 10, new Uint8Array([1, 2, 3]));
    store.read(16 * KiB, bytes);
    expect([...bytes.subarray(8, 15)]).toEqual([0, 0, 1, 2, 3, 0, 0]);
    expect(statSync(shardFile(directory, 1)).size).toBe(16 * KiB);
    store.close();
    // Creating a shard leaves no temporary behind.
    expect(readdirSync(directory).filter((name) => name.startsWith(".")).sort()).toEqual([".shard-00000001.bin.tmp-99-0-0"]);
  });

  test("four threads writing the same missing shards at once: every write lands, each shard made once", async () => {
    const directory = freshPath("race");
    const shardCount = 16;
    const shardBytes = 64 * KiB;
    const writers = 4;
    const store = await ShardedStore.create(directory, { size: shardCount * shardBytes, shardSize: shardBytes });
    const barrier = new Int32Array(new SharedArrayBuffer(4));
    // Writer w writes the w-th quarter of every shard: all of them find every shard missing.
    const results = await Promise.all(
      Array.from({ length: writers }, (_, writer) => {
        const quarter = shardBytes / writers;
        const ranges = Array.from({ length: shardCount }, (_, shard) => ({ byteOffset: shard * shardBytes + writer * quarter, byteLength: quarter }));
        const worker = new Worker(new URL("./fixtures/shard-writer.ts", import.meta.url), {
          workerData: { descriptor: store.describe(), ranges, barrier, writers },
        });
        return new Promise<{ errors: string[]; written: number }>((done, fail) => {
          worker.once("message", done);
          worker.once("error", fail);
        });
      }),
    );
    for (const result of results) expect(result).toEqual({ errors: [], written: shardCount });
    expect(shardFiles(directory).length).toBe(shardCount);
    expect(readdirSync(directory).filter((name) => name.startsWith("."))).toEqual([]);
    store.flush();
    const all = new Uint8Array(shardCount * shardBytes);
    store.read(0, all);
    expect(checkPattern(all, 0, shardBytes)).toBeNull();
    store.close();
  });
});

describe("open descriptors are bounded", () => {
  const SHARDS = 2000;
  const SHARD_BYTES = 4 * KiB;
  const directory = freshPath("many");
  const openFds = () => readdirSync("/proc/self/fd").length;

  /** 2000 shards written in the documented format, each holding the pattern at its offset. */
  function makeManyShards(): void {
    writeDatastore(directory, { format: "bun-umap-sharded", version: 1, size: SHARDS * SHARD_BYTES, shardSize: SHARD_BYTES, shardName: "shard-{index}.bin" });
    const bytes = new Uint8Array(SHARD_BYTES);
    for (let i = 0; i < SHARDS; i++) {
      fillPattern(bytes, i * SHARD_BYTES);
      writeFileSync(shardFile(directory, i), bytes);
    }
  }

  test("one instance reading 2000 shards holds at most maxOpenFiles descriptors", async () => {
    makeManyShards();
    const before = openFds();
    const store = await ShardedStore.open(directory, { maxOpenFiles: 4 });
    const bytes = new Uint8Array(3 * SHARD_BYTES + 100);
    let maxOpen = 0;
    for (let offset = 0; offset + bytes.length <= store.size; offset += 2 * SHARD_BYTES + 77) {
      store.read(offset, bytes);
      expect(checkPattern(bytes, offset, SHARD_BYTES)).toBeNull();
      maxOpen = Math.max(maxOpen, store.openFileCount, openFds() - before);
    }
    expect(maxOpen).toBe(4);
    store.close();
    expect(openFds()).toBe(before);
  });

  test("a region over 2000 shards reads right with far fewer descriptors than shards", async () => {
    const before = openFds();
    const store = await ShardedStore.open(directory, { maxOpenFiles: 8 });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 2 * MiB, fillers: 2 });
    let maxExtra = 0;
    for (let offset = 0; offset < region.byteLength; offset += MiB) {
      const length = Math.min(MiB, region.byteLength - offset);
      expect(checkPattern(region.view(offset, length), offset, region.pageSize)).toBeNull();
      maxExtra = Math.max(maxExtra, openFds() - before);
    }
    // Each worker's instance holds at most 8; the engine's own descriptors come on top.
    expect(maxExtra).toBeLessThan(100);
    await region.close();
    store.close();
  });
});
