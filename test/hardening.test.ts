/**
 * One test per bug found by a review that attacked the sharded and LZ4 stores, the engine's
 * failure paths and the command line: hostile files (FIFOs, devices and links where files should
 * be), disk full, lost and leaked resources. Each failed before its fix.
 *
 * Operations that used to block forever (open() of a FIFO waits for a writer; reading
 * /dev/zero never ends) run in a child process with a time limit, so a regression fails the test
 * instead of stalling the suite.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { appendFileSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defineStore, ErrorCode, Lz4Store, umap, UmapError } from "../src/index.ts";
import { RECORD_HEADER_BYTES, RecordKind, encodeRecordHeader, hash64 } from "../stores/lib/lz4-format.ts";
import { KiB, random, tempDir, rejection } from "./helpers.ts";

const PATTERN_STORE = new URL("./fixtures/pattern-store.ts", import.meta.url);
const dir = tempDir();
afterAll(() => dir.remove());
let caseCount = 0;
/** A fresh directory for one case. */
function caseDir(): string {
  const path = join(dir.path, `case-${caseCount++}`);
  mkdirSync(path);
  return path;
}

/**
 * Runs `body` (module code with ShardedStore and Lz4Store in scope) in a child with a time
 * limit; it prints one line, `code <ERR_...>` for a UmapError or `ok`.
 */
function runChild(body: string): { outcome: string; timedOut: boolean; stderr: string } {
  const script = `
    import { ShardedStore, Lz4Store, UmapError } from "./src/index.ts";
    try {
      ${body}
      console.log("ok");
    } catch (error) {
      if (!(error instanceof UmapError)) throw error;
      console.log("code " + error.code + " " + error.message);
    }
  `;
  const result = Bun.spawnSync([process.execPath, "-e", script], {
    cwd: join(import.meta.dir, ".."),
    stdout: "pipe",
    stderr: "pipe",
    timeout: 15_000,
  });
  return { outcome: result.stdout.toString().trim(), timedOut: result.exitCode === null, stderr: result.stderr.toString() };
}

const mkfifo = (path: string) => execFileSync("mkfifo", [path]);

/** "ok", or the code of the UmapError fn throws. */
function failureOf(fn: () => unknown): string {
  try {
    fn();
    return "ok";
  } catch (error) {
    expect(error).toBeInstanceOf(UmapError);
    return (error as UmapError).code;
  }
}

describe("prefetch", () => {
  test("a prefetch of a page that another request is filling and fails rejects too, not resolves", async () => {
    // Pages another request was filling when a prefetch began are not in its ticket; it waited
    // for them and then resolved, whatever became of them, so the second prefetch of a failing
    // page reported success for a page that was never filled.
    const store = defineStore(PATTERN_STORE, { size: 1024 * KiB, delayMs: 150, failFrom: 0, failTo: 64 * KiB });
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 4096 * KiB, readAhead: 0 });
    const first = region.prefetch(0, 64 * KiB);
    // The first prefetch's fill is in flight (it sleeps 150 ms before failing).
    await Bun.sleep(40);
    const second = region.prefetch(0, 64 * KiB);
    expect((await rejection(first)).code).toBe(ErrorCode.STORE);
    expect((await rejection(second)).code).toBe(ErrorCode.STORE);
    expect(region.stats().fills).toBe(0);
  });
});

describe("something else where a file should be", () => {
  /** A datastore of two 4 KiB shards, shard 0 written. */
  const datastore = (): string => {
    const path = join(caseDir(), "datastore");
    const body = runChild(`
      const store = await ShardedStore.create(${JSON.stringify(path)}, { size: 8192, shardSize: 4096 });
      store.write(0, new Uint8Array(4096).fill(7));
      store.flush();
      store.close();
    `);
    expect(body.outcome).toBe("ok");
    return path;
  };

  test("ShardedStore.open: a FIFO as manifest.json is ERR_UMAP_CORRUPT, not a wait for a writer", () => {
    const path = caseDir();
    mkfifo(join(path, "manifest.json"));
    const { outcome, timedOut } = runChild(`await ShardedStore.open(${JSON.stringify(path)});`);
    expect(timedOut).toBe(false);
    expect(outcome).toStartWith(`code ${ErrorCode.CORRUPT}`);
    expect(outcome).toContain("manifest.json: not a regular file");
  });

  test("ShardedStore.open: a manifest.json linked to /dev/zero is ERR_UMAP_CORRUPT, not an endless read", () => {
    const path = caseDir();
    symlinkSync("/dev/zero", join(path, "manifest.json"));
    const { outcome, timedOut } = runChild(`await ShardedStore.open(${JSON.stringify(path)});`);
    expect(timedOut).toBe(false);
    expect(outcome).toStartWith(`code ${ErrorCode.CORRUPT}`);
  });

  test("ShardedStore.open: a manifest over 1 MiB is ERR_UMAP_CORRUPT naming its size", async () => {
    const { ShardedStore } = await import("../src/index.ts");
    const path = caseDir();
    const manifest = { format: "bun-umap-sharded", version: 1, size: 8192, shardSize: 4096, shardName: "shard-{index}.bin", padding: "x".repeat(1024 * KiB) };
    writeFileSync(join(path, "manifest.json"), JSON.stringify(manifest));
    const error = await rejection(ShardedStore.open(path));
    expect(error.code).toBe(ErrorCode.CORRUPT);
    expect(error.message).toContain(`${join(path, "manifest.json")}: ${JSON.stringify(manifest).length} bytes, over the 1048576`);
  });

  test("a shard replaced by a FIFO after open(): the read fails as corrupt instead of blocking the worker", () => {
    const path = datastore();
    const { outcome, timedOut } = runChild(`
      const store = await ShardedStore.open(${JSON.stringify(path)});
      const shard = ${JSON.stringify(join(path, "shard-00000000.bin"))};
      (await import("node:fs")).unlinkSync(shard);
      (await import("node:child_process")).execFileSync("mkfifo", [shard]);
      store.read(0, new Uint8Array(4096));
    `);
    expect(timedOut).toBe(false);
    expect(outcome).toStartWith(`code ${ErrorCode.CORRUPT}`);
    expect(outcome).toContain("shard-00000000.bin is not a regular file");
  });

  test("a concatenated file replaced by a FIFO: the read fails with ERR_UMAP_STORE instead of blocking", () => {
    const path = join(caseDir(), "part.bin");
    writeFileSync(path, new Uint8Array(4096).fill(3));
    const { outcome, timedOut } = runChild(`
      const store = await ShardedStore.concat([${JSON.stringify(path)}]);
      (await import("node:fs")).unlinkSync(${JSON.stringify(path)});
      (await import("node:child_process")).execFileSync("mkfifo", [${JSON.stringify(path)}]);
      store.read(0, new Uint8Array(4096));
    `);
    expect(timedOut).toBe(false);
    expect(outcome).toStartWith(`code ${ErrorCode.STORE}`);
    expect(outcome).toContain("is not a regular file");
  });

  test("flush() of a datastore where a FIFO is named like a shard fails instead of blocking", () => {
    const path = datastore();
    const { outcome, timedOut } = runChild(`
      const store = await ShardedStore.open(${JSON.stringify(path)}, { writable: true });
      (await import("node:child_process")).execFileSync("mkfifo", [${JSON.stringify(join(path, "shard-00000001.bin"))}]);
      store.flush();
    `);
    expect(timedOut).toBe(false);
    expect(outcome).toStartWith(`code ${ErrorCode.STORE}`);
    expect(outcome).toContain("shard-00000001.bin");
  });

  for (const [what, make] of [
    ["a FIFO", (lockPath: string) => mkfifo(lockPath)],
    ["a link to /dev/zero", (lockPath: string) => symlinkSync("/dev/zero", lockPath)],
  ] as const) {
    test(`Lz4Store.open({ writable: true }) with ${what} as its lock file: ERR_UMAP_STORE, not a hang`, () => {
      const path = caseDir();
      writeFileSync(join(path, "data.bin"), new Uint8Array(64 * KiB).fill(9));
      const packed = join(path, "data.lz4");
      expect(runChild(`await Lz4Store.pack(${JSON.stringify(join(path, "data.bin"))}, ${JSON.stringify(packed)});`).outcome).toBe("ok");
      make(`${packed}.lock`);
      for (const call of [`await Lz4Store.open(${JSON.stringify(packed)}, { writable: true });`, `await Lz4Store.compact(${JSON.stringify(packed)});`]) {
        const { outcome, timedOut } = runChild(call);
        expect(timedOut).toBe(false);
        expect(outcome).toStartWith(`code ${ErrorCode.STORE}`);
        expect(outcome).toContain(`${packed}.lock`);
      }
      unlinkSync(`${packed}.lock`);
    });
  }
});

describe("Lz4Store after a torn append (a full disk)", () => {
  /** Incompressible bytes, so every chunk record is as long as its chunk. */
  const noise = (byteLength: number, seed: number): Uint8Array => {
    const next = random(seed);
    const bytes = new Uint8Array(byteLength);
    for (let i = 0; i < byteLength; i++) bytes[i] = Math.floor(next() * 256);
    return bytes;
  };
  const packNoise = async (directory: string): Promise<{ packed: string; original: Uint8Array }> => {
    const original = noise(64 * KiB, 7);
    writeFileSync(join(directory, "data.bin"), original);
    const packed = join(directory, "data.lz4");
    await Lz4Store.pack(join(directory, "data.bin"), packed, { chunkSize: 4 * KiB });
    rmSync(join(directory, "data.bin"));
    return { packed, original };
  };
  const readAll = async (packed: string): Promise<Uint8Array> => {
    const store = await Lz4Store.open(packed);
    const bytes = new Uint8Array(store.size);
    store.read(0, bytes);
    store.close();
    return bytes;
  };

  test("a write after a torn record fails with ERR_UMAP_STORE instead of succeeding unseen; reopening recovers the last flush", async () => {
    // A write appended after a torn record was never found by any scan, yet write() returned:
    // its data was lost silently, and flush() then failed as an internal error.
    const { packed, original } = await packNoise(caseDir());
    const store = await Lz4Store.open(packed, { writable: true });
    // Another instance's append cut short: a record header promising 4 KiB, then 1000 bytes.
    const chunk = noise(4 * KiB, 8);
    const header = encodeRecordHeader({ kind: RecordKind.RAW, chunkIndex: 3, storedByteLength: chunk.length, contentHash: hash64(chunk), uncompressedByteLength: chunk.length });
    appendFileSync(packed, Buffer.concat([header, chunk.subarray(0, 1000)]));
    // A page that compresses to a record far shorter than the tear's missing 3 KiB, so the
    // scan stops at the tear (a longer one would run past it into garbage: CORRUPT).
    const page = new Uint8Array(4 * KiB).fill(0x5a);
    let error: unknown;
    try {
      store.write(8 * KiB, page);
    } catch (thrown) {
      error = thrown;
    }
    expect(error).toBeInstanceOf(UmapError);
    expect((error as UmapError).code).toBe(ErrorCode.STORE);
    expect((error as UmapError).message).toContain("is torn");
    // Nothing was written since the last flush, so the file keeps that state (the flush has
    // nothing to add, or fails on the tear: either way nothing is reported written that is not).
    try {
      store.close();
    } catch {
      // Its flush fails the same way; the lock and descriptors are released regardless.
    }
    expect(Buffer.compare(await readAll(packed), original)).toBe(0);
    // Opening for writing drops the torn tail, and the file takes writes again.
    const again = await Lz4Store.open(packed, { writable: true });
    again.write(8 * KiB, page);
    again.close();
    const expected = original.slice();
    expected.set(page, 8 * KiB);
    expect(Buffer.compare(await readAll(packed), expected)).toBe(0);
    expect(RECORD_HEADER_BYTES).toBe(header.length);
  });

  const mountPoint = join(dir.path, "small-tmpfs");
  const mount = () => Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mountPoint]).exitCode === 0;
  const unmount = () => void Bun.spawnSync(["umount", "--lazy", mountPoint]);
  // Whether this process may mount (root with CAP_SYS_ADMIN), tried once and undone at once.
  let canMount = false;
  if (process.getuid?.() === 0) {
    mkdirSync(mountPoint);
    canMount = mount();
    if (canMount) unmount();
  }
  test.skipIf(!canMount)("on a full 512 KiB tmpfs (needs root to mount): writes fail loudly, never unseen; the last flush survives", async () => {
    expect(mount()).toBe(true);
    try {
      await fullDisk();
    } finally {
      unmount();
    }
  });
  async function fullDisk(): Promise<void> {
    const { packed, original } = await packNoise(mountPoint);
    const store = await Lz4Store.open(packed, { writable: true });
    // Fill the file system to within a few KiB, so a 4 KiB chunk record is cut short.
    const room = Number(Bun.spawnSync(["df", "--output=avail", "-B1", mountPoint]).stdout.toString().trim().split("\n").pop());
    writeFileSync(join(mountPoint, "filler"), new Uint8Array(Math.max(0, room - 6 * KiB)));
    const page = noise(4 * KiB, 9);
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) outcomes.push(failureOf(() => store.write(i * 4 * KiB, page)));
    // The first write fits, a later one is cut short, and every write after that fails: none
    // reports success after the tear, even once there is room again.
    const firstFailure = outcomes.indexOf(ErrorCode.STORE);
    expect(firstFailure).toBeGreaterThan(0);
    expect(outcomes.slice(firstFailure).every((outcome) => outcome === ErrorCode.STORE)).toBe(true);
    rmSync(join(mountPoint, "filler"));
    // Small records (a page that compresses well) fit inside what the tear still promises, so
    // no scan can pass it: each used to be reported written and then never read back.
    const small = new Uint8Array(4 * KiB).fill(0x5a);
    for (let i = 0; i < 4; i++) expect(failureOf(() => store.write(i * 4 * KiB, small))).toBe(ErrorCode.STORE);
    try {
      store.close();
    } catch {
      // Its flush fails; the lock is released regardless.
    }
    expect(readdirSync(mountPoint).sort()).toEqual(["data.lz4"]);
    expect(Buffer.compare(await readAll(packed), original)).toBe(0);
    expect(statSync(packed).size).toBeGreaterThan(original.length);
  }
});

describe("crash safety under kill -9 at random moments", () => {
  test("Lz4Store: after SIGKILL anywhere in write-backs and flushes, reopening gives one whole flushed generation", async () => {
    const path = join(caseDir(), "generations.lz4");
    writeFileSync(join(dir.path, "zeros.bin"), new Uint8Array(512 * KiB));
    await Lz4Store.pack(join(dir.path, "zeros.bin"), path, { chunkSize: 16 * KiB });
    const next = random(0x5eed);
    const WRITER = join(import.meta.dir, "fixtures", "lz4-generation-writer.ts");
    let reached = 0;
    for (let round = 0; round < 3; round++) {
      const child = Bun.spawn([process.execPath, WRITER, path], { stdout: "pipe", stderr: "pipe" });
      // Let it flush a few generations past the state it started from, then kill it at a
      // moment of the seed's choosing: in a flush, in write-backs, or between generations.
      const target = 2 + Math.floor(next() * 3);
      const reader = child.stdout.getReader();
      let text = "";
      const printed = () => [...text.matchAll(/flushed (\d+)\n/g)].map((match) => Number(match[1]));
      while (printed().length < target) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      expect(printed().length).toBe(target);
      await Bun.sleep(Math.floor(next() * 25));
      child.kill("SIGKILL");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      expect(await child.exited).not.toBe(0);
      const lastPrinted = printed().at(-1)!;
      // The root may be switched before its line was printed: one generation more, not two.
      const store = await Lz4Store.open(path);
      const words = new Uint32Array(store.size / 4);
      store.read(0, new Uint8Array(words.buffer));
      store.close();
      const generation = words[0]!;
      expect(generation === lastPrinted || generation === lastPrinted + 1).toBe(true);
      const strays = words.filter((word) => word !== generation).length;
      expect(strays).toBe(0);
      reached += lastPrinted;
    }
    // The last writer's lock is stale and its unflushed records are dropped: writing works again.
    const store = await Lz4Store.open(path, { writable: true });
    store.write(0, new Uint8Array(16 * KiB).fill(0xee));
    store.close();
    const again = await Lz4Store.open(path);
    const bytes = new Uint8Array(again.size);
    again.read(0, bytes);
    again.close();
    expect(bytes[0]).toBe(0xee);
    expect(bytes[16 * KiB]).not.toBe(0xee);
    expect(reached).toBeGreaterThan(0);
  });
});

describe("pack and unpack targets", () => {
  const CLI = join(import.meta.dir, "..", "bin", "bun-umap.ts");
  const cli = (...args: string[]) => Bun.spawnSync([process.execPath, CLI, ...args], { stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  const packed = async (directory: string): Promise<{ source: string; packed: string }> => {
    const source = join(directory, "data.bin");
    writeFileSync(source, new Uint8Array(20 * KiB).fill(4));
    await Lz4Store.pack(source, join(directory, "data.lz4"));
    return { source, packed: join(directory, "data.lz4") };
  };

  test("unpack or pack onto a FIFO is refused, and the FIFO is left as it was (it used to be replaced by a file)", async () => {
    const directory = caseDir();
    const files = await packed(directory);
    const fifo = join(directory, "pipe");
    mkfifo(fifo);
    const unpacking = await rejection(Lz4Store.unpack(files.packed, fifo));
    expect(unpacking.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(unpacking.message).toContain(`${fifo} is not a regular file`);
    const packing = await rejection(Lz4Store.pack(files.source, fifo));
    expect(packing.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(statSync(fifo).isFIFO()).toBe(true);
    expect(readdirSync(directory).sort()).toEqual(["data.bin", "data.lz4", "pipe"]);
  });

  test.skipIf(process.getuid?.() !== 0)("unpack onto a character device (a copy of /dev/null; needs root) leaves the device node in place", async () => {
    // `bun-umap unpack big.lz4 /dev/null`, to time decompression, renamed a file over /dev/null.
    const directory = caseDir();
    const files = await packed(directory);
    const device = join(directory, "null");
    execFileSync("mknod", [device, "c", "1", "3"]);
    const result = cli("unpack", files.packed, device);
    expect(result.exitCode).toBe(1);
    expect(result.stderr.toString()).toContain(`${ErrorCode.INVALID_ARGUMENT}: Lz4Store.unpack: the target ${device} is not a regular file`);
    expect(statSync(device).isCharacterDevice()).toBe(true);
  });

  test("pack onto a link to its own source is refused and the source kept; a link to another file is written through", async () => {
    const directory = caseDir();
    const files = await packed(directory);
    const toSource = join(directory, "link-to-source");
    symlinkSync(files.source, toSource);
    const error = await rejection(Lz4Store.pack(files.source, toSource));
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(error.message).toContain("is the source file under another name");
    expect(statSync(files.source).size).toBe(20 * KiB);
    const other = join(directory, "other.bin");
    writeFileSync(other, "old");
    const toOther = join(directory, "link-to-other");
    symlinkSync(other, toOther);
    await Lz4Store.unpack(files.packed, toOther);
    expect(statSync(other).size).toBe(20 * KiB);
    expect(readdirSync(directory).sort()).toEqual(["data.bin", "data.lz4", "link-to-other", "link-to-source", "other.bin"]);
  });

  test("bun-umap pack --chunk-size that is not a power of two from 4k to 16m is bad usage (exit 2)", async () => {
    const directory = caseDir();
    const files = await packed(directory);
    for (const size of ["1000", "2k", "32m", "99999999999999999999"]) {
      const result = cli("pack", files.source, join(directory, "out.lz4"), "--chunk-size", size);
      expect(result.exitCode).toBe(2);
      expect(result.stderr.toString()).toContain("--chunk-size must be a power of two");
    }
    expect(cli("pack", files.source, join(directory, "out.lz4"), "--chunk-size", "8k").exitCode).toBe(0);
  });
});

describe("descriptor cache", () => {
  test("a file reopened after its descriptor was evicted is checked again: a concatenated file that grew is ERR_UMAP_STORE", async () => {
    // The size check was remembered by shard index past the descriptor it was made on, so a
    // file reopened after an eviction was never looked at again.
    const { ShardedStore } = await import("../src/index.ts");
    const directory = caseDir();
    const paths = ["a.bin", "b.bin"].map((name) => join(directory, name));
    for (const path of paths) writeFileSync(path, new Uint8Array(8 * KiB).fill(1));
    const store = await ShardedStore.concat(paths, { maxOpenFiles: 1 });
    const target = new Uint8Array(4 * KiB);
    store.read(0, target);
    store.read(8 * KiB, target); // evicts a.bin's descriptor
    expect(store.openFileCount).toBe(1);
    appendFileSync(paths[0]!, new Uint8Array(100));
    let error: unknown;
    try {
      store.read(0, target);
    } catch (thrown) {
      error = thrown;
    }
    expect(error).toBeInstanceOf(UmapError);
    expect((error as UmapError).code).toBe(ErrorCode.STORE);
    expect((error as UmapError).message).toContain(`${paths[0]} is ${8 * KiB + 100} bytes, expected ${8 * KiB}`);
    store.close();
    expect(store.openFileCount).toBe(0);
  });
});

describe("every evictor dead", () => {
  // When every evictor had died, a fault that needed a dirty page evicted parked its thread
  // forever: the main thread was that thread, so it never started a replacement, and SIGTERM or
  // SIGINT could not end the process (their flush runs in JavaScript). Now the engine fails the
  // queued write-backs while no evictor is left: the pages stay dirty and flush() says why.
  test("a writable region whose store kills every evictor: writing past the buffer fails or finishes, never parks forever", () => {
    const path = join(caseDir(), "data.bin");
    writeFileSync(path, new Uint8Array(1024 * KiB));
    const store = new URL("./fixtures/dying-writer-store.ts", import.meta.url).href;
    const result = Bun.spawnSync(
      [
        process.execPath,
        "-e",
        `
        import { umap, defineStore } from "./src/index.ts";
        const region = await umap(defineStore(${JSON.stringify(store)}, { path: ${JSON.stringify(path)} }), { writable: true, pageSize: 65536, bufferSize: 512 * 1024 });
        for (let offset = 0; offset < region.byteLength; offset += 4096) region.bytes[offset] = 7;
        console.log("written");
        await region.flush().catch((error) => console.log("flush", error.code));
        `,
      ],
      { cwd: join(import.meta.dir, ".."), stdout: "pipe", stderr: "pipe", timeout: 20_000, killSignal: "SIGKILL" },
    );
    expect(result.signalCode).not.toBe("SIGKILL");
    expect(result.stdout.toString()).toContain("written");
    expect(result.stdout.toString()).toContain(`flush ${ErrorCode.STORE}`);
  });
});

describe("failed fills in writable regions", () => {
  test('onFillError: "zero" with writable: true is refused: a write to the zeroed page was dropped without a word', async () => {
    // The zeroed page was installed without write-protection: a write to it made no fault, so
    // the page was never dirty, flush() resolved, and the store kept its old bytes.
    const path = join(caseDir(), "data.bin");
    writeFileSync(path, new Uint8Array(256 * KiB).fill(0xab));
    const error = await rejection(umap(path, { writable: true, onFillError: "zero" }));
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(error.message).toContain('onFillError: "zero" cannot be combined with writable: true');
    // Read-only regions keep the option.
    await using region = await umap(path, { onFillError: "zero", pageSize: 64 * KiB });
    expect(region.bytes[5]).toBe(0xab);
  });
});

describe("API consistency", () => {
  test("an S3 location in capitals is S3 for Lz4Store as for ShardedStore, not a missing local file", async () => {
    const { ShardedStore } = await import("../src/index.ts");
    // Both refusals come from the S3 path, before any request: a local path would be NOT_FOUND.
    const lz4 = await rejection(Lz4Store.open("S3://bucket/data.lz4", { writable: true }));
    expect(lz4.code).toBe(ErrorCode.UNSUPPORTED);
    expect(lz4.message).toContain("opens read-only");
    const sharded = await rejection(ShardedStore.open("S3://bucket/prefix", { maxOpenFiles: 4 }));
    expect(sharded.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(sharded.message).toContain("an S3 datastore opens no files");
  });
});
