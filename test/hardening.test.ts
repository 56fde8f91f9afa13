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
import { mkdirSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defineStore, ErrorCode, umap, UmapError } from "../src/index.ts";
import { KiB, tempDir } from "./helpers.ts";

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

async function rejection(promise: Promise<unknown>): Promise<UmapError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UmapError);
  return error as UmapError;
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
