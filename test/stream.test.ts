/**
 * The STREAM port (bench/stream.ts) at a small size: three regions on sharded datastores share a
 * buffer half their total size; STREAM's own result check must pass, and what the regions wrote
 * back must be in the datastores when they are opened again.
 */
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { runStream } from "../bench/stream.ts";
import { ShardedStore, umap } from "../src/index.ts";
import { KiB, MiB, tempDir } from "./helpers.ts";

const dir = tempDir();
afterAll(() => dir.remove());

test("STREAM over three sharded datastores through a buffer half their size validates", async () => {
  const elementCount = 256 * 1024; // 2 MiB per array, 6 MiB in all, a 3 MiB buffer
  const iterations = 3;
  const result = await runStream({ directory: dir.path, elementCount, iterations, pageSize: 64 * KiB, shardSize: 512 * KiB + 8 });
  expect(result.relativeErrors).toEqual({ a: 0, b: 0, c: 0 });
  expect(result.passed).toBe(true);
  expect(result.evictions).toBeGreaterThan(0);
  expect(result.writebacks).toBeGreaterThan(0);
  for (const rate of Object.values(result.bestRateMBps)) expect(rate).toBeGreaterThan(0);

  // STREAM's expected final values, replayed on scalars, must be what the datastores now hold.
  let [aj, bj, cj] = [2.0, 2.0, 0.0];
  for (let k = 0; k < iterations; k++) {
    cj = aj;
    bj = 3.0 * cj;
    cj = aj + bj;
    aj = bj + 3.0 * cj;
  }
  expect(result.checksum).toBe((aj + bj + cj) * elementCount);
  for (const [name, expected] of [["a", aj], ["b", bj], ["c", cj]] as const) {
    const store = await ShardedStore.open(join(dir.path, name));
    await using region = await umap(store, { pageSize: 64 * KiB, bufferSize: 4 * MiB });
    const values = new Float64Array(region.bytes.buffer, region.bytes.byteOffset, elementCount);
    let wrong = 0;
    for (let j = 0; j < elementCount; j++) wrong += values[j] === expected ? 0 : 1;
    expect(`${name}: ${wrong} wrong`).toBe(`${name}: 0 wrong`);
    await region.close();
    store.close();
  }
});
