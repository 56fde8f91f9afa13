/**
 * Fills by UFFDIO_MOVE: read-only regions whose pages are whole 2 MiB huge pages get their
 * staging pages moved in instead of copied. The bytes must be the store's, through eviction and
 * refaults, with the copy path still used where a move cannot be (a page already there, a
 * writable region, the feature masked off), and the counters saying which path ran.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { umap } from "../src/index.ts";
import { loadNative } from "../src/native.ts";
import { checkPattern, KiB, MiB, tempDir, writePatternFile } from "./helpers.ts";

const UFFD_FEATURE_MOVE = 1 << 16;
const HUGE_PAGE = 2 * MiB;
const dir = tempDir();
const file = join(dir.path, "pattern.bin");
// Not a multiple of the page: the last page is partly past the end and must read zeros there.
const FILE_BYTES = 24 * MiB + 12 * KiB;
beforeAll(() => writePatternFile(file, FILE_BYTES));
afterAll(() => dir.remove());

function moveSupported(): boolean {
  // The engine asks for UFFD_FEATURE_MOVE; the kernel may not have it (Linux 6.8+).
  return (loadNative().native.umap_engine_features() & UFFD_FEATURE_MOVE) !== 0;
}

/** Reads the whole region twice through a buffer of a quarter of it, checking every byte. */
async function scanTwice() {
  const region = await umap(file, { pageSize: HUGE_PAGE, bufferSize: 6 * MiB });
  try {
    const supported = moveSupported();
    for (let pass = 0; pass < 2; pass++) {
      expect(checkPattern(region.bytes, 0, region.pageSize)).toBeNull();
    }
    expect(region.bytes.length).toBe(FILE_BYTES);
    return { stats: region.stats(), supported };
  } finally {
    await region.close();
  }
}

describe("UFFDIO_MOVE fills", () => {
  test("a read-only region of 2 MiB pages is filled by moves, correct through eviction and refaults", async () => {
    const { stats, supported } = await scanTwice();
    const pageCount = Math.ceil(FILE_BYTES / HUGE_PAGE);
    expect(stats.fills).toBeGreaterThanOrEqual(2 * pageCount - 3); // both passes, minus what stayed
    expect(stats.evictions).toBeGreaterThan(0);
    if (!supported) {
      expect(stats.movedPages).toBe(0);
      return;
    }
    expect(stats.movedPages).toBe(stats.fills);
    expect(stats.copyRaces).toBe(0);
  });

  test("with the feature masked off the same region is filled by copies, with the same bytes", async () => {
    process.env.BUN_UMAP_MASK_FEATURES = String(UFFD_FEATURE_MOVE);
    try {
      const { stats } = await scanTwice();
      expect(stats.movedPages).toBe(0);
      expect(stats.fills).toBeGreaterThan(0);
    } finally {
      delete process.env.BUN_UMAP_MASK_FEATURES;
    }
  });

  test("writable regions never move (a moved page cannot be installed write-protected)", async () => {
    const copy = join(dir.path, "writable.bin");
    writePatternFile(copy, 8 * MiB);
    await using region = await umap(copy, { pageSize: HUGE_PAGE, bufferSize: 4 * MiB, writable: true });
    expect(checkPattern(region.bytes, 0, region.pageSize)).toBeNull();
    const after = region.stats();
    expect(after.fills).toBeGreaterThanOrEqual(4);
    expect(after.movedPages).toBe(0);
  });

  test("a page already installed makes the move stop there; the copy finishes the page and counts the race", async () => {
    await using region = await umap(file, { pageSize: HUGE_PAGE, bufferSize: 8 * MiB, readAhead: 0 });
    const { native } = loadNative();
    // A zero page appears at the start of page 3 behind the engine's back.
    expect(native.umap_test_preinstall_zero_page(region.slot, 3)).toBe(0);
    await region.prefetch(3 * HUGE_PAGE, HUGE_PAGE);
    const stats = region.stats();
    expect(stats.fills).toBe(1);
    expect(stats.copyRaces).toBe(1);
    expect(stats.movedPages).toBe(0);
    // The winner's system page stays zero; every other byte of the page is the store's.
    const page = region.view(3 * HUGE_PAGE, HUGE_PAGE);
    expect(page.subarray(0, 4 * KiB).every((b) => b === 0)).toBe(true);
    expect(checkPattern(page.subarray(4 * KiB), 3 * HUGE_PAGE + 4 * KiB, region.pageSize)).toBeNull();
  });
});
