/**
 * Lz4Store: the packed format round-trips (store level and mapped), corruption is reported and
 * never served, the write path keeps every evictor's appends and survives a crash at its last
 * flush, and the CLI does what its usage says.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ErrorCode, Lz4Store, umap, UmapError } from "../src/index.ts";
import { MemoryRange, type ByteRange } from "../stores/lib/byte-range.ts";
import { FILE_HEADER_BYTES, ROOT_SLOT_OFFSETS, decodeRootSlot, encodeRootSlot, hash64 } from "../stores/lib/lz4-format.ts";
import { storeConformance } from "./conformance.ts";
import { checkPattern, fillPattern, KiB, MiB, random, tempDir, rejection, thrown } from "./helpers.ts";

const dir = tempDir("bun-umap-lz4-");
afterAll(() => dir.remove());
let fileCount = 0;
const CLI = join(import.meta.dir, "..", "bin", "bun-umap.ts");
/** A real library file (Debian's libicu72): about 31 MB of mixed, partly compressible data. */
const LIBRARY_FILE = "/usr/lib/x86_64-linux-gnu/libicudata.so.72.1";

function tempPath(name: string): string {
  return join(dir.path, `${fileCount++}-${name}`);
}

/**
 * Data that identifies itself but also compresses: pattern words, with every third 16 KiB
 * stretch zeroed (LZ4 chunks) and the rest left as pattern (which LZ4 cannot shrink: raw chunks).
 */
function mixedData(byteLength: number): Uint8Array {
  const bytes = new Uint8Array(byteLength);
  fillPattern(bytes, 0);
  for (let at = 0; at < byteLength; at += 48 * KiB) bytes.fill(0, at, Math.min(byteLength, at + 16 * KiB));
  return bytes;
}

async function packed(data: Uint8Array, chunkSize?: number): Promise<{ source: string; target: string }> {
  const source = tempPath("raw.bin");
  const target = tempPath("packed.lz4");
  writeFileSync(source, data);
  await Lz4Store.pack(source, target, chunkSize === undefined ? {} : { chunkSize });
  return { source, target };
}

function firstDifference(a: Uint8Array, b: Uint8Array): string | null {
  if (a.length !== b.length) return `lengths ${a.length} and ${b.length}`;
  if (Buffer.compare(a, b) === 0) return null;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `byte ${i}: ${a[i]} != ${b[i]}`;
  return null;
}

function sha256(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

function runCli(...args: string[]): { exitCode: number; stdout: string; stderr: string } {
  const result = Bun.spawnSync([process.execPath, CLI, ...args], { stdout: "pipe", stderr: "pipe" });
  return { exitCode: result.exitCode ?? -1, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

describe("pack and read", () => {
  test.each([4 * KiB, 64 * KiB, 1 * MiB])("chunk size %p: every byte comes back, raw and LZ4 chunks both used", async (chunkSize) => {
    const size = 3 * MiB + 12345; // not a chunk multiple: the last chunk is short
    const data = mixedData(size);
    const { target } = await packed(data, chunkSize);
    const store = await Lz4Store.open(target);
    try {
      const info = store.info();
      expect(info.uncompressedSize).toBe(size);
      expect(info.chunkCount).toBe(Math.ceil(size / chunkSize));
      expect(info.chunkSize).toBe(chunkSize);
      expect(info.supersededByteLength).toBe(0);
      expect(info.fileByteLength).toBe(statSync(target).size);
      expect(info.fileByteLength).toBeLessThan(size);
      if (chunkSize === 4 * KiB) expect(info.rawChunkCount).toBeGreaterThan(0);
      expect(info.lz4ChunkCount).toBeGreaterThan(0);
      // Whole, then random reads of random lengths (across chunk boundaries, inside one chunk).
      const whole = new Uint8Array(size);
      store.read(0, whole);
      expect(firstDifference(whole, data)).toBeNull();
      const next = random(0x1234 + chunkSize);
      for (let i = 0; i < 300; i++) {
        const byteOffset = Math.floor(next() * size);
        const byteLength = Math.min(size - byteOffset, 1 + Math.floor(next() * 3 * chunkSize));
        const part = new Uint8Array(byteLength);
        store.read(byteOffset, part);
        expect(`${byteOffset}+${byteLength}: ${firstDifference(part, data.subarray(byteOffset, byteOffset + byteLength))}`).toBe(
          `${byteOffset}+${byteLength}: null`,
        );
      }
      expect(await store.verify()).toEqual({ chunkCount: info.chunkCount, badChunks: [] });
    } finally {
      store.close();
    }
  });

  test.each([
    [4 * KiB, 64 * KiB],
    [1 * MiB, 4 * KiB],
    [64 * KiB, 64 * KiB],
  ])("mapped with page size %p over chunks of %p through a 1 MiB buffer", async (pageSize, chunkSize) => {
    const size = 6 * MiB + 4 * KiB;
    const data = new Uint8Array(size);
    fillPattern(data, 0);
    const { target } = await packed(data, chunkSize);
    const store = await Lz4Store.open(target);
    const region = await umap(store, { pageSize, bufferSize: 2 * MiB });
    try {
      expect(region.byteLength).toBe(size);
      // In 256 KiB windows, so the whole region passes through the buffer (and is evicted).
      for (let at = 0; at < size; at += 256 * KiB) {
        const length = Math.min(256 * KiB, size - at);
        expect(checkPattern(region.view(at, length), at, pageSize)).toBeNull();
      }
      const stats = region.stats();
      expect(stats.fills).toBe(Math.ceil(size / pageSize));
      expect(stats.evictions).toBeGreaterThan(0);
      expect(stats.fillErrors).toBe(0);
    } finally {
      await region.close();
      store.close();
    }
  });

  test.skipIf(!existsSync(LIBRARY_FILE))(
    "a real 31 MB library packs smaller and hashes the same through a 4 MiB buffer; one flipped byte is named, never served",
    async () => {
      const target = tempPath("library.lz4");
      await Lz4Store.pack(LIBRARY_FILE, target);
      const original = readFileSync(LIBRARY_FILE);
      expect(statSync(target).size).toBeLessThan(original.length);
      const store = await Lz4Store.open(target);
      const region = await umap(store, { bufferSize: 4 * MiB });
      const hasher = new Bun.CryptoHasher("sha256");
      for (let at = 0; at < region.byteLength; at += 4 * MiB) hasher.update(region.view(at, Math.min(4 * MiB, region.byteLength - at)));
      expect(hasher.digest("hex")).toBe(sha256(original));
      expect(region.stats().residentPages * region.pageSize).toBeLessThanOrEqual(4 * MiB);
      await region.close();
      store.close();

      // Flip one byte in the middle of the packed copy: it lies in some chunk's payload.
      const bad = tempPath("library-flipped.lz4");
      copyFileSync(target, bad);
      const bytes = readFileSync(bad);
      bytes[bytes.length >> 1]! ^= 0x01;
      writeFileSync(bad, bytes);
      const damaged = await Lz4Store.open(bad);
      try {
        const { badChunks } = await damaged.verify();
        expect(badChunks.length).toBe(1);
        const { chunkIndex, message } = badChunks[0]!;
        expect(message).toContain(bad);
        expect(message).toContain(`chunk ${chunkIndex}`);
        const chunkStart = chunkIndex * damaged.chunkSize;
        const error = thrown(() => damaged.read(chunkStart, new Uint8Array(10)));
        expect(error.code).toBe(ErrorCode.CORRUPT);
        expect(error.message).toContain(`chunk ${chunkIndex}`);
        // Through a region: prefetch of the bad chunk rejects naming it; its neighbours read fine.
        const mapped = await umap(damaged, { bufferSize: 4 * MiB });
        try {
          const failed = await rejection(mapped.prefetch(chunkStart, damaged.chunkSize));
          expect(failed.code).toBe(ErrorCode.CORRUPT);
          expect((failed.cause as { code?: string }).code).toBe(ErrorCode.CORRUPT);
          expect((failed.cause as Error).message).toContain(`chunk ${chunkIndex} `);
          expect(failed.message).toContain(`chunk ${chunkIndex} `);
          expect(mapped.stats().poisonedPages).toBe(0);
          const before = Math.max(0, chunkStart - damaged.chunkSize);
          await mapped.prefetch(before, chunkStart - before);
          expect(sha256(mapped.view(before, chunkStart - before))).toBe(sha256(original.subarray(before, chunkStart)));
        } finally {
          await mapped.close();
        }
      } finally {
        damaged.close();
      }
    },
    60_000,
  );

  test("a mapping that reaches a corrupt chunk dies with SIGBUS naming the chunk, before any digest is printed", async () => {
    const { target } = await packed(mixedData(1 * MiB), 64 * KiB);
    const bytes = readFileSync(target);
    bytes[bytes.length >> 1]! ^= 0x01;
    writeFileSync(target, bytes);
    const child = Bun.spawnSync([process.execPath, join(import.meta.dir, "fixtures", "lz4-map-hash.ts"), target], { stdout: "pipe", stderr: "pipe" });
    expect(child.signalCode).toBe("SIGBUS");
    expect(child.stdout.toString()).not.toContain("sha256");
    const stderr = child.stderr.toString();
    expect(stderr).toContain(`cannot fill Lz4Store ${target}`);
    expect(stderr).toMatch(/ERR_UMAP_CORRUPT: .*: chunk \d+ \(bytes \[\d+, \d+\), record at byte \d+\) fails (its checksum|to decompress)/);
  }, 30_000);

  test("an empty file packs and reports itself; umap() refuses to map it", async () => {
    const { target } = await packed(new Uint8Array(0));
    const store = await Lz4Store.open(target);
    expect(store.info().chunkCount).toBe(0);
    expect(store.size).toBe(0);
    const error = await rejection(umap(store));
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
    store.close();
  });
});

test("over an asynchronous range, reads of many spans resolve with the right bytes", async () => {
  const data = mixedData(2 * MiB + 333);
  const { target } = await packed(data, 16 * KiB);
  const store = await Lz4Store.openRange(asyncRange(new MemoryRange(new Uint8Array(readFileSync(target)), "memory:async")));
  try {
    const next = random(77);
    for (let i = 0; i < 50; i++) {
      const byteOffset = Math.floor(next() * data.length);
      const part = new Uint8Array(Math.min(data.length - byteOffset, 1 + Math.floor(next() * 5 * MiB)));
      const pending = store.read(byteOffset, part);
      expect(pending).toBeInstanceOf(Promise);
      await pending;
      expect(firstDifference(part, data.subarray(byteOffset, byteOffset + part.length))).toBeNull();
    }
    expect((await store.verify()).badChunks).toEqual([]);
    expect(thrown(() => store.describe()).code).toBe(ErrorCode.UNSUPPORTED);
  } finally {
    store.close();
  }
});

describe("arguments", () => {
  test("S3 where it is not supported: writable opens, S3 sources, unpack and compact; the s3 option on a local file", async () => {
    for (const [attempt, code, text] of [
      [() => Lz4Store.open("s3://bucket/key.lz4", { writable: true }), ErrorCode.UNSUPPORTED, "opens read-only"],
      [() => Lz4Store.pack("s3://bucket/raw", tempPath("x.lz4")), ErrorCode.UNSUPPORTED, "must be a local file"],
      [() => Lz4Store.unpack("s3://bucket/key.lz4", tempPath("x.raw")), ErrorCode.UNSUPPORTED, "local files only"],
      [() => Lz4Store.compact("s3://bucket/key.lz4"), ErrorCode.UNSUPPORTED, "local files only"],
      [() => Lz4Store.open(tempPath("x.lz4"), { s3: { region: "us-east-1" } }), ErrorCode.INVALID_ARGUMENT, "option s3"],
      [() => Lz4Store.open("s3://bucket/", {}), ErrorCode.INVALID_ARGUMENT, "names no object"],
    ] as [() => Promise<unknown>, ErrorCode, string][]) {
      const error = await rejection(attempt());
      expect(error.code).toBe(code);
      expect(error.message).toContain(text);
    }
  });

  test("bad options, missing files and directories name the problem", async () => {
    const { source } = await packed(mixedData(64 * KiB));
    const cases: [Promise<unknown>, string, string][] = [
      [Lz4Store.pack(source, tempPath("a.lz4"), { chunkSize: 3000 }), ErrorCode.INVALID_ARGUMENT, "chunkSize"],
      [Lz4Store.pack(source, tempPath("a.lz4"), { chunkSize: 32 * MiB }), ErrorCode.INVALID_ARGUMENT, "chunkSize"],
      [Lz4Store.pack(source, source), ErrorCode.INVALID_ARGUMENT, "same file"],
      [Lz4Store.pack(tempPath("missing"), tempPath("a.lz4")), ErrorCode.NOT_FOUND, "missing"],
      [Lz4Store.pack(source, dir.path), ErrorCode.INVALID_ARGUMENT, "directory"],
      [Lz4Store.open(tempPath("missing.lz4")), ErrorCode.NOT_FOUND, "missing.lz4"],
      [Lz4Store.open(dir.path), ErrorCode.INVALID_ARGUMENT, "directory"],
      [Lz4Store.open(source, { writable: "yes" as unknown as boolean }), ErrorCode.INVALID_ARGUMENT, "writable"],
      [Lz4Store.open(source, { chunkSize: 4096 } as never), ErrorCode.INVALID_ARGUMENT, '"chunkSize"'],
      [Lz4Store.open(source), ErrorCode.CORRUPT, "wrong magic"],
    ];
    for (const [attempt, code, text] of cases) {
      const error = await rejection(attempt);
      expect(`${error.code}: ${error.message.includes(text)}`).toBe(`${code}: true`);
    }
  });
});

/** Rewrites the current root of a packed file in place (recomputing its check) to point elsewhere. */
function withRoot(bytes: Uint8Array, change: (root: { sequence: number; indexOffset: number; dataEnd: number }) => void): Uint8Array {
  const copy = bytes.slice();
  const slotAt = ROOT_SLOT_OFFSETS[0];
  const root = decodeRootSlot(copy.subarray(slotAt, slotAt + 32))!;
  change(root);
  copy.set(encodeRootSlot(root), slotAt);
  return copy;
}

describe("corruption at open", () => {
  test("wrong magic, version, a truncated file and an index pointing outside it are each named", async () => {
    const { target } = await packed(mixedData(256 * KiB), 4 * KiB);
    // A copy: a Buffer's slice() would share its bytes.
    const good = new Uint8Array(readFileSync(target));
    const version = good.slice();
    version[8] = 2;
    const root = decodeRootSlot(good.subarray(ROOT_SLOT_OFFSETS[0], ROOT_SLOT_OFFSETS[0] + 32))!;
    const cases: [string, Uint8Array, string][] = [
      ["magic", Object.assign(good.slice(), { 0: 0x41 }), "wrong magic"],
      ["version", version, "format version 2"],
      ["short", good.subarray(0, 100), "truncated: 100 bytes"],
      ["truncated", good.subarray(0, good.length - 10), "truncated: the index ends at byte"],
      ["cut in the data", good.subarray(0, root.indexOffset - 1000), "truncated"],
      ["root past the end", withRoot(good, (r) => (r.dataEnd = good.length + 4096)), "truncated"],
      ["root before the data", withRoot(good, (r) => (r.indexOffset = 16)), "outside"],
      ["root at a chunk", withRoot(good, (r) => (r.indexOffset = FILE_HEADER_BYTES)), "not an index record"],
      ["both roots torn", Object.assign(good.slice(), { [ROOT_SLOT_OFFSETS[0] + 3]: 0x77 }), "neither root slot"],
    ];
    for (const [name, bytes, text] of cases) {
      const path = tempPath(`${name.replaceAll(" ", "-")}.lz4`);
      writeFileSync(path, bytes);
      const error = await rejection(Lz4Store.open(path));
      expect(`${name}: ${error.code}: ${error.message.includes(path) && error.message.includes(text) ? "named" : error.message}`).toBe(
        `${name}: ${ErrorCode.CORRUPT}: named`,
      );
    }
  });

  test("an index entry pointing outside the file is refused at open, even with a matching index checksum", async () => {
    const { target } = await packed(mixedData(64 * KiB), 4 * KiB);
    const bytes = new Uint8Array(readFileSync(target));
    const root = decodeRootSlot(bytes.subarray(ROOT_SLOT_OFFSETS[0], ROOT_SLOT_OFFSETS[0] + 32))!;
    const payloadAt = root.indexOffset + 32;
    const view = new DataView(bytes.buffer);
    view.setBigUint64(payloadAt + 5 * 24, BigInt(bytes.length + 100), true); // entry 5's offset
    // Recompute the index record's content hash and header check so only the entry is wrong.
    view.setBigUint64(root.indexOffset + 16, hash64(bytes.subarray(payloadAt, root.dataEnd)), true);
    view.setUint32(root.indexOffset + 28, Bun.hash.crc32(bytes.subarray(root.indexOffset, root.indexOffset + 28)) >>> 0, true);
    const path = tempPath("entry-outside.lz4");
    writeFileSync(path, bytes);
    const error = await rejection(Lz4Store.open(path));
    expect(error.code).toBe(ErrorCode.CORRUPT);
    expect(error.message).toContain("chunk 5");
    expect(error.message).toContain("past byte");
  });
});

/** A range whose reads answer on a later turn of the event loop. */
function asyncRange(range: MemoryRange): ByteRange {
  return {
    size: range.size,
    label: range.label,
    read: (byteOffset, target) => Bun.sleep(0).then(() => range.read(byteOffset, target)),
  };
}

describe("fuzz", () => {
  test("5000 random mutations and truncations never crash, hang or return wrong bytes", async () => {
    const seed = 0x5eed1234;
    const ITERATIONS = 5000;
    process.stderr.write(`lz4 fuzz seed 0x${seed.toString(16)}\n`);
    const data = mixedData(96 * KiB + 1000);
    const { target } = await packed(data, 4 * KiB);
    const good = new Uint8Array(readFileSync(target));
    const next = random(seed);
    const outcomes = { openFailed: 0, readFailed: 0, intact: 0 };
    const readBack = new Uint8Array(data.length);
    for (let iteration = 0; iteration < ITERATIONS; iteration++) {
      let bytes = good.slice();
      const mutation = iteration % 4;
      if (mutation === 0) {
        // Flip one to eight random bits anywhere.
        for (let flips = 1 + Math.floor(next() * 8); flips > 0; flips--) bytes[Math.floor(next() * bytes.length)]! ^= 1 << Math.floor(next() * 8);
      } else if (mutation === 1) {
        bytes = bytes.subarray(0, Math.floor(next() * bytes.length));
      } else if (mutation === 2) {
        // A 32-bit field overwritten with an edge value, in the header, a record header or the index.
        const at = Math.floor(next() * (bytes.length - 4));
        const values = [0, 0xffffffff, bytes.length, 0x7fffffff, 4096, Math.floor(next() * 2 ** 32)];
        new DataView(bytes.buffer).setUint32(at, values[Math.floor(next() * values.length)]!, true);
      } else {
        // Damage aimed at the header and roots, where checks are densest.
        bytes[Math.floor(next() * FILE_HEADER_BYTES)]! ^= 1 << Math.floor(next() * 8);
      }
      let store: Lz4Store;
      try {
        // Every other iteration answers reads asynchronously, as a remote backend would.
        const range = new MemoryRange(bytes, `memory:fuzz-${iteration}`);
        store = await Lz4Store.openRange(iteration % 2 === 0 ? range : asyncRange(range));
      } catch (error) {
        if (!(error instanceof UmapError) || error.code !== ErrorCode.CORRUPT) throw new Error(`iteration ${iteration} (seed ${seed}): open threw ${String(error)}`);
        outcomes.openFailed++;
        continue;
      }
      try {
        expect(store.size).toBe(data.length);
        readBack.fill(0xee);
        await store.read(0, readBack);
        const difference = firstDifference(readBack, data);
        if (difference) throw new Error(`iteration ${iteration} (seed ${seed}): wrong bytes served silently: ${difference}`);
        outcomes.intact++;
      } catch (error) {
        if (!(error instanceof UmapError) || error.code !== ErrorCode.CORRUPT) throw error;
        outcomes.readFailed++;
      }
    }
    // Every kind of outcome happened: the fuzzer reaches past the open checks.
    expect(outcomes.openFailed).toBeGreaterThan(100);
    expect(outcomes.readFailed).toBeGreaterThan(100);
    expect(outcomes.intact).toBeGreaterThan(0);
    expect(outcomes.openFailed + outcomes.readFailed + outcomes.intact).toBe(ITERATIONS);
  }, 60_000);
});

/** The data after writing generation `generation` into the chunks below `chunkCount` (see the crash writer). */
function generationData(size: number, chunkSize: number, layers: [generation: number, chunkCount: number][]): Uint8Array {
  const bytes = mixedData(size);
  for (const [generation, chunkCount] of layers) {
    for (let chunkIndex = 0; chunkIndex < chunkCount; chunkIndex++) {
      bytes.fill((generation * 16 + (chunkIndex % 16)) & 0xff, chunkIndex * chunkSize, Math.min(size, (chunkIndex + 1) * chunkSize));
    }
  }
  return bytes;
}

describe("writing", () => {
  test.each([
    [64 * KiB, 4 * KiB],
    [4 * KiB, 64 * KiB],
  ])("pages of %p over chunks of %p: four evictors write every page once, shuffled; every worker reads the others' appends; two generations", async (pageSize, chunkSize) => {
    const size = 8 * MiB + 3000;
    const pageCount = Math.ceil(size / pageSize);
    const { target } = await packed(mixedData(size), chunkSize);
    const store = await Lz4Store.open(target, { writable: true });
    const region = await umap(store, { writable: true, pageSize, bufferSize: 1 * MiB, evictors: 4, fillers: 3 });
    const wordCount = Math.floor(size / 4);
    const words = new Uint32Array(region.bytes.buffer, region.bytes.byteOffset, wordCount);
    const expected = mixedData(size);
    const expectedWords = new Uint32Array(expected.buffer, 0, wordCount);
    const next = random(0xc0ffee);
    try {
      for (const generation of [1, 2]) {
        // A shuffled page order: evictions then write back pages far apart, from all evictors.
        const order = Array.from({ length: pageCount }, (_, i) => i);
        for (let i = order.length - 1; i > 0; i--) {
          const j = Math.floor(next() * (i + 1));
          [order[i], order[j]] = [order[j]!, order[i]!];
        }
        const writebacksBefore = region.stats().writebacks;
        for (const page of order) {
          const first = (page * pageSize) / 4;
          const end = Math.min(wordCount, first + pageSize / 4);
          for (let w = first; w < end; w++) {
            words[w] = (Math.imul(w, 2654435761) ^ (generation << 28)) >>> 0;
            expectedWords[w] = words[w]!;
          }
        }
        // Read everything back before the flush: evicted pages come back from the appended
        // records, through whichever filler gets them.
        let wrong = 0;
        for (let w = 0; w < wordCount; w++) wrong += words[w] === expectedWords[w] ? 0 : 1;
        expect(`generation ${generation}: ${wrong} wrong words before flush`).toBe(`generation ${generation}: 0 wrong words before flush`);
        await region.flush();
        const stats = region.stats();
        expect(stats.writebacks - writebacksBefore).toBe(pageCount);
        expect(stats.writebackErrors).toBe(0);
        expect(stats.fillErrors).toBe(0);
        expect(stats.evictions).toBeGreaterThan(0);
      }
    } finally {
      await region.close();
      store.close();
    }
    const reopened = await Lz4Store.open(target);
    const before = reopened.info();
    const readBack = new Uint8Array(size);
    reopened.read(0, readBack);
    reopened.close();
    expect(firstDifference(readBack, expected)).toBeNull();
    // Two generations of every chunk were appended: the first (and the packed data) is superseded.
    expect(before.supersededByteLength).toBeGreaterThan(0);
    const { byteLengthBefore, byteLengthAfter } = await Lz4Store.compact(target);
    expect(byteLengthBefore).toBe(before.fileByteLength);
    expect(byteLengthAfter).toBe(before.fileByteLength - before.supersededByteLength);
    const compacted = await Lz4Store.open(target);
    try {
      expect(compacted.info().supersededByteLength).toBe(0);
      compacted.read(0, readBack);
      expect(firstDifference(readBack, expected)).toBeNull();
    } finally {
      compacted.close();
    }
  }, 60_000);

  test("a process killed after a flush leaves the flushed state; its stale lock is taken over; a torn root falls back", async () => {
    const size = 1 * MiB + 100;
    const chunkSize = 16 * KiB;
    const chunkCount = Math.ceil(size / chunkSize);
    const { target } = await packed(mixedData(size), chunkSize);
    const writer = Bun.spawnSync([process.execPath, join(import.meta.dir, "fixtures", "lz4-crash-writer.ts"), target], { stderr: "pipe" });
    expect(writer.signalCode).toBe("SIGKILL");
    expect(existsSync(`${target}.lock`)).toBe(true);
    const flushed = generationData(size, chunkSize, [[1, chunkCount]]);
    const readBack = new Uint8Array(size);
    const afterCrash = await Lz4Store.open(target);
    // The unflushed generation-2 appends are still in the file, but nothing points at them.
    expect(afterCrash.info().supersededByteLength).toBeGreaterThan(0);
    afterCrash.read(0, readBack);
    afterCrash.close();
    expect(firstDifference(readBack, flushed)).toBeNull();

    // Writable again: the dead writer's lock is taken over, and what it never flushed is dropped.
    const sizeWithLeftovers = statSync(target).size;
    const store = await Lz4Store.open(target, { writable: true });
    expect(statSync(target).size).toBeLessThan(sizeWithLeftovers);
    const chunk = new Uint8Array(chunkSize).fill(0x3c);
    store.write(2 * chunkSize, chunk);
    store.read(0, readBack);
    const expected = flushed.slice();
    expected.fill(0x3c, 2 * chunkSize, 3 * chunkSize);
    expect(firstDifference(readBack, expected)).toBeNull();
    store.close();
    expect(existsSync(`${target}.lock`)).toBe(false);

    // A root slot torn by a crash mid-write fails its check: the other slot (one flush older) wins.
    const bytes = new Uint8Array(readFileSync(target));
    const roots = ROOT_SLOT_OFFSETS.map((at) => decodeRootSlot(bytes.subarray(at, at + 32)));
    const newest = roots[0]!.sequence > roots[1]!.sequence ? 0 : 1;
    bytes[ROOT_SLOT_OFFSETS[newest] + 5]! ^= 0xff;
    writeFileSync(target, bytes);
    const fallenBack = await Lz4Store.open(target);
    fallenBack.read(0, readBack);
    fallenBack.close();
    expect(firstDifference(readBack, flushed)).toBeNull();
  }, 30_000);

  test("garbage appended during a writing session is reported as corrupt at the next read, never skipped", async () => {
    const { target } = await packed(mixedData(256 * KiB), 64 * KiB);
    const store = await Lz4Store.open(target, { writable: true });
    try {
      const end = statSync(target).size;
      appendFileSync(target, new Uint8Array(40).fill(0x5a));
      const error = thrown(() => store.read(0, new Uint8Array(16)));
      expect(error.code).toBe(ErrorCode.CORRUPT);
      expect(error.message).toContain(`no record header at byte ${end}`);
      expect(error.message).toContain(target);
    } finally {
      // Closing flushes, which scans too: it refuses the same way, and the descriptors are released.
      expect(thrown(() => store.close()).code).toBe(ErrorCode.CORRUPT);
    }
    expect(existsSync(`${target}.lock`)).toBe(false);
    // The last flushed state is intact: reopening for writing drops the garbage.
    const again = await Lz4Store.open(target, { writable: true });
    const bytes = new Uint8Array(256 * KiB);
    again.read(0, bytes);
    again.close();
    expect(firstDifference(bytes, mixedData(256 * KiB))).toBeNull();
  });

  test("one writer at a time; part-chunk writes merge into the chunk; a read-only store refuses writable regions", async () => {
    const { target } = await packed(mixedData(512 * KiB), 64 * KiB);
    const store = await Lz4Store.open(target, { writable: true });
    try {
      const second = await rejection(Lz4Store.open(target, { writable: true }));
      expect(second.code).toBe(ErrorCode.STORE);
      expect(second.message).toContain(`open for writing by process ${process.pid} (this one)`);
      // Straddles chunks 0 and 1 (part of each) and covers none whole.
      store.write(60 * KiB, new Uint8Array(8 * KiB).fill(7));
      const straddle = new Uint8Array(12 * KiB);
      store.read(58 * KiB, straddle);
      const expectedStraddle = mixedData(70 * KiB).subarray(58 * KiB);
      expectedStraddle.fill(7, 2 * KiB, 10 * KiB);
      expect(firstDifference(straddle, expectedStraddle)).toBeNull();
      expect(readdirSync(dir.path).filter((name) => name.includes(".lock.chunk-"))).toEqual([]);
      expect(thrown(() => store.write(512 * KiB - 10, new Uint8Array(11))).code).toBe(ErrorCode.INVALID_ARGUMENT);
      // Readers opened meanwhile see the last flushed state.
      store.write(0, new Uint8Array(64 * KiB).fill(9));
      const reader = await Lz4Store.open(target);
      const first = new Uint8Array(4);
      reader.read(0, first);
      expect([...first]).toEqual([...mixedData(4)]);
      reader.close();
      const readOnly = await Lz4Store.open(target);
      expect(thrown(() => readOnly.write(0, new Uint8Array(64 * KiB))).code).toBe(ErrorCode.UNSUPPORTED);
      const refused = await rejection(umap(readOnly, { writable: true }));
      expect(refused.code).toBe(ErrorCode.UNSUPPORTED);
      readOnly.close();
    } finally {
      store.close();
    }
    const after = await Lz4Store.open(target);
    const first = new Uint8Array(4);
    after.read(0, first);
    expect([...first]).toEqual([9, 9, 9, 9]);
    after.close();
  });
});

describe("cli", () => {
  test("pack, info, verify, unpack and compact; a damaged file fails verify naming its chunk", async () => {
    const source = tempPath("cli.bin");
    const data = mixedData(512 * KiB + 7);
    writeFileSync(source, data);
    const target = tempPath("cli.lz4");
    const packedRun = runCli("pack", source, target, "--chunk-size", "16k");
    expect(packedRun.exitCode).toBe(0);
    expect(packedRun.stdout).toContain("33 chunks of 16.0 KiB");
    const info = runCli("info", target, "--json");
    expect(info.exitCode).toBe(0);
    const parsed = JSON.parse(info.stdout);
    expect([parsed.uncompressedSize, parsed.chunkCount, parsed.chunkSize, parsed.fileByteLength]).toEqual([data.length, 33, 16 * KiB, statSync(target).size]);
    expect(parsed.ratio).toBeGreaterThan(1);
    const verified = runCli("verify", target);
    expect([verified.exitCode, verified.stdout.trim()]).toEqual([0, `ok: ${target}: all 33 chunks pass their checksums`]);
    const unpacked = tempPath("cli.out");
    expect(runCli("unpack", target, unpacked).exitCode).toBe(0);
    expect(firstDifference(new Uint8Array(readFileSync(unpacked)), data)).toBeNull();
    expect(runCli("compact", target).exitCode).toBe(0);
    expect(runCli("verify", target).exitCode).toBe(0);

    const bytes = readFileSync(target);
    bytes[bytes.length >> 1]! ^= 0x10;
    writeFileSync(target, bytes);
    const damaged = runCli("verify", target);
    expect(damaged.exitCode).toBe(1);
    expect(damaged.stdout).toMatch(/^bad chunk \d+: .*fails its checksum/m);
    expect(damaged.stdout).toContain(`CORRUPT: ${target}: 1 of 33 chunks are bad`);

    writeFileSync(target, bytes.subarray(0, 50));
    const truncated = runCli("info", target);
    expect(truncated.exitCode).toBe(1);
    expect(truncated.stderr).toContain("ERR_UMAP_CORRUPT");
    expect(truncated.stderr).toContain("truncated");
  }, 30_000);

  test("bad usage exits 2 with the usage", () => {
    for (const args of [[], ["frob"], ["pack", "only-one"], ["info", "x", "--chunk-size", "4k"], ["pack", "a", "b", "--chunk-size", "lots"]]) {
      const run = runCli(...args);
      expect(`${args.join(" ")}: ${run.exitCode}`).toBe(`${args.join(" ")}: 2`);
      expect(run.stderr).toContain("usage: bun-umap");
    }
    expect(runCli("--help").exitCode).toBe(0);
    // The message names the command, not its first operand.
    expect(runCli("pack", "only-one").stderr).toContain("bun-umap: pack takes SOURCE TARGET, got 1 argument(s)");
  });
});

// The conformance suite maps with 64 KiB pages: chunks smaller than, equal to and larger than
// a page (the last written by read-modify-write under chunk locks).
for (const [chunkSize, writable] of [
  [4 * KiB, true],
  [64 * KiB, true],
  [256 * KiB, true],
] as const) {
  storeConformance(`Lz4Store with ${chunkSize / KiB} KiB chunks`, async () => {
    let lastPath = "";
    return {
      writable,
      async make(data) {
        ({ target: lastPath } = await packed(data, chunkSize));
        return Lz4Store.open(lastPath, { writable });
      },
      async reopen(options) {
        return Lz4Store.open(lastPath, options);
      },
    };
  });
}
