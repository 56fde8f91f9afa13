/**
 * The few libc calls the benchmarks need that node:fs lacks: posix_fadvise (to drop a file from
 * the page cache for the cold runs) and fdatasync. Loaded with bun:ffi dlopen, once.
 */
import { dlopen, FFIType } from "bun:ffi";
import { closeSync, fdatasyncSync, openSync } from "node:fs";

const POSIX_FADV_DONTNEED = 4;

let lib: ReturnType<typeof open> | undefined | null;

function open() {
  return dlopen("libc.so.6", {
    posix_fadvise: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.i32], returns: FFIType.i32 },
  });
}

/**
 * Drops the file's pages from the page cache: fdatasync (dirty pages cannot be dropped), then
 * posix_fadvise(POSIX_FADV_DONTNEED) over the whole file. Returns null on success, or why it
 * could not (the cold results then say so).
 */
export function dropFromPageCache(path: string): string | null {
  if (lib === undefined) {
    try {
      lib = open();
    } catch (error) {
      lib = null;
      return `dlopen(libc.so.6) failed: ${(error as Error).message}`;
    }
  }
  if (lib === null) return "libc.so.6 could not be loaded";
  const fd = openSync(path, "r");
  try {
    fdatasyncSync(fd);
    // posix_fadvise returns the error number itself (not -1 and errno).
    const result = lib.symbols.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    return result === 0 ? null : `posix_fadvise(POSIX_FADV_DONTNEED) returned ${result}`;
  } finally {
    closeSync(fd);
  }
}

/**
 * The fraction of the file's bytes in the page cache, from util-linux's fincore(1), or null where
 * it is missing: the cold runs record it to show the drop worked.
 */
export function cachedFraction(path: string): number | null {
  const run = Bun.spawnSync(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", path]);
  if (run.exitCode !== 0) return null;
  const [resident, size] = run.stdout.toString().trim().split(/\s+/).map(Number);
  if (!size || resident === undefined || !Number.isFinite(resident)) return null;
  return Math.min(1, resident / size);
}
