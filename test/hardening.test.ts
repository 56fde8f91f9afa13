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
