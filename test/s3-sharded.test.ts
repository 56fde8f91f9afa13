/**
 * Sharded datastores on S3: shards as objects under a prefix, on loopback servers. Writing needs
 * conditional writes (If-None-Match for the lease, If-Match for the shards' read-modify-writes):
 * moto honours both, s3rver neither, so writing runs on moto and s3rver checks that writing is
 * refused there (and that reading works). The suite joins the store conformance suite as "S3
 * sharded datastore".
 */
import { afterAll, describe, expect, test } from "bun:test";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { writeSync } from "node:fs";
import { ErrorCode, ShardedStore, umap } from "../src/index.ts";
import { storeConformance } from "./conformance.ts";
import { checkPattern, fillPattern, KiB, MiB, rejection } from "./helpers.ts";
import { startS3Server, type S3Server } from "./s3-helpers.ts";

const moto = await startS3Server("moto", "umap-sharded");
const s3rver = await startS3Server("s3rver", "umap-sharded");
afterAll(async () => {
  if (typeof moto !== "string") await moto.stop();
  if (typeof s3rver !== "string") await s3rver.stop();
});

let prefixCount = 0;
const freshPrefix = (name: string) => `${name}-${prefixCount++}`;

/** Keys under a prefix, sorted, without the prefix. */
async function keysUnder(server: S3Server, prefix: string): Promise<string[]> {
  const listed = await server.client.send(new ListObjectsV2Command({ Bucket: server.bucket, Prefix: `${prefix}/` }));
  return (listed.Contents ?? []).map((item) => item.Key!.slice(prefix.length + 1)).sort();
}

/** A test that needs the server, or a skip that says why it could not start. */
function serverTest(name: string, server: S3Server | string, run: (server: S3Server) => Promise<void>, timeoutMs = 60_000): void {
  test(name, async () => {
    if (typeof server === "string") {
      writeSync(2, `${name}: skipped: ${server}\n`);
      return;
    }
    await run(server);
  }, timeoutMs);
}

const shardKey = (shardIndex: number) => `shard-${String(shardIndex).padStart(8, "0")}.bin`;

describe("S3 sharded datastores (moto: conditional writes)", () => {
  serverTest("done when: 24 MiB written through a 2 MiB buffer by two evictors reopens with the same bytes", moto, async (server) => {
    const location = `s3://${server.bucket}/${freshPrefix("done-when")}`;
    const size = 24 * MiB;
    const pageSize = 256 * KiB;
    const store = await ShardedStore.create(location, { size, shardSize: MiB, s3: server.s3 });
    expect(store.shardCount).toBe(24);
    const startedMs = performance.now();
    const region = await umap(store, { writable: true, pageSize, bufferSize: 2 * MiB, evictors: 2 });
    fillPattern(region.bytes, 0);
    await region.flush();
    const stats = region.stats();
    await region.close();
    await store.close();
    const writeMs = performance.now() - startedMs;
    // Every page went back exactly once (evicted, or flushed at close).
    expect(stats.writebacks).toBe(size / pageSize);
    expect(stats.writebackErrors).toBe(0);
    const prefix = location.slice(`s3://${server.bucket}/`.length);
    const keys = await keysUnder(server, prefix);
    expect(keys).toEqual(["manifest.json", ...Array.from({ length: 24 }, (_, i) => shardKey(i))]);

    const reopenedMs = performance.now();
    const reopened = await ShardedStore.open(location, { s3: server.s3 });
    const again = await umap(reopened, { pageSize, bufferSize: 2 * MiB });
    try {
      for (let offset = 0; offset < size; offset += pageSize) {
        const problem = checkPattern(again.view(offset, pageSize), offset, pageSize);
        if (problem) throw new Error(problem);
      }
      expect(again.stats().fillErrors).toBe(0);
    } finally {
      await again.close();
      await reopened.close();
    }
    writeSync(2, `S3 sharded done-when (moto): wrote 24 MiB in ${Math.round(writeMs)} ms, read back in ${Math.round(performance.now() - reopenedMs)} ms\n`);
  });

  serverTest("never-written shards read as zeros and make no object; a zero write makes none either", moto, async (server) => {
    const prefix = freshPrefix("sparse");
    const location = `s3://${server.bucket}/${prefix}`;
    const store = await ShardedStore.create(location, { size: 8 * MiB, shardSize: MiB, s3: server.s3 });
    await store.write(3 * MiB, new Uint8Array(64 * KiB)); // zeros into a missing shard
    const region = await umap(store, { writable: true, pageSize: 64 * KiB, bufferSize: MiB });
    fillPattern(region.view(0, 64 * KiB), 0);
    fillPattern(region.view(8 * MiB - 64 * KiB, 64 * KiB), 8 * MiB - 64 * KiB);
    let sum = 0;
    for (let offset = 64 * KiB; offset < 8 * MiB - 64 * KiB; offset += 4 * KiB) sum += region.bytes[offset]!;
    expect(sum).toBe(0);
    await region.close();
    await store.close();
    // The lease is gone, and only the written shards and the manifest are there.
    expect(await keysUnder(server, prefix)).toEqual(["manifest.json", shardKey(0), shardKey(7)]);
    const reopened = await ShardedStore.open(location, { s3: server.s3 });
    const bytes = new Uint8Array(128 * KiB);
    await reopened.read(8 * MiB - 128 * KiB, bytes);
    expect(bytes.subarray(0, 64 * KiB).every((byte) => byte === 0)).toBe(true);
    expect(checkPattern(bytes.subarray(64 * KiB), 8 * MiB - 64 * KiB, 64 * KiB)).toBeNull();
    await reopened.close();
  });

  serverTest("two instances writing one shard: the one with a stale copy loses its If-Match, redoes it, and no write is lost", moto, async (server) => {
    const location = `s3://${server.bucket}/${freshPrefix("race")}`;
    const owner = await ShardedStore.create(location, { size: MiB, shardSize: MiB, s3: server.s3 });
    // Two evictors' instances, built as workers build theirs.
    const Store = ShardedStore as unknown as new (options: unknown) => ShardedStore;
    const first = new Store(owner.describe().options);
    const second = new Store(owner.describe().options);
    const page = (value: number) => new Uint8Array(4 * KiB).fill(value);
    await first.write(0, page(1)); // first now holds the shard and its ETag
    await second.write(4 * KiB, page(2)); // the shard changes under first's copy
    await first.write(8 * KiB, page(3)); // If-Match on the old ETag: 412, read again, write again
    expect(first.s3Stats!.conflicts).toBe(1);
    expect(second.s3Stats!.conflicts).toBe(0);
    // Many writes at once from both, to pages of the same shard: every one lands.
    await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 ? first : second).write((16 + i) * 4 * KiB, page(16 + i))));
    const bytes = new Uint8Array(32 * 4 * KiB);
    await owner.read(0, bytes);
    for (const [pageIndex, value] of [[0, 1], [1, 2], [2, 3], ...Array.from({ length: 16 }, (_, i) => [16 + i, 16 + i])] as [number, number][]) {
      expect(bytes[pageIndex * 4 * KiB]).toBe(value);
      expect(bytes[pageIndex * 4 * KiB + 4 * KiB - 1]).toBe(value);
    }
    expect(bytes[5 * 4 * KiB]).toBe(0);
    await first.close();
    await second.close();
    await owner.close();
  });

  serverTest("a second writer is refused with ERR_UMAP_STORE; readers are not; the lease is free again after close", moto, async (server) => {
    const prefix = freshPrefix("lease");
    const location = `s3://${server.bucket}/${prefix}`;
    const writer = await ShardedStore.create(location, { size: MiB, shardSize: 256 * KiB, s3: server.s3 });
    await writer.flush(); // the manifest, so the datastore can be opened
    const second = await rejection(() => ShardedStore.open(location, { writable: true, s3: server.s3 }));
    expect(second.code).toBe(ErrorCode.STORE);
    expect(second.message).toContain("another writer");
    expect(second.message).toContain(`${prefix}/lease.json`);
    expect((await rejection(() => ShardedStore.create(location, { size: MiB, shardSize: 256 * KiB, s3: server.s3 }))).code).toBe(ErrorCode.STORE);
    const reader = await ShardedStore.open(location, { s3: server.s3 });
    expect(reader.writable).toBe(false);
    await reader.close();
    await writer.close();
    const next = await ShardedStore.open(location, { writable: true, s3: server.s3 });
    await next.close();
  });

  serverTest("a live writer renews its lease: past its first expiry a second writer is still refused", moto, async (server) => {
    const location = `s3://${server.bucket}/${freshPrefix("renewed")}`;
    const writer = await ShardedStore.create(location, { size: MiB, shardSize: MiB, s3: server.s3, leaseTimeMs: 1_000 });
    await writer.flush();
    await Bun.sleep(1_500); // renewed every ~333 ms; without renewal it would have expired
    const second = await rejection(() => ShardedStore.open(location, { writable: true, s3: server.s3 }));
    expect(second.code).toBe(ErrorCode.STORE);
    await writer.close();
    const next = await ShardedStore.open(location, { writable: true, s3: server.s3 });
    await next.close();
  });

  serverTest("a crashed writer's lease is taken over once expired, and not before", moto, async (server) => {
    const prefix = freshPrefix("expired");
    const location = `s3://${server.bucket}/${prefix}`;
    const store = await ShardedStore.create(location, { size: MiB, shardSize: MiB, s3: server.s3 });
    await store.close();
    const lease = (expiresAtMs: number) =>
      new TextEncoder().encode(JSON.stringify({ format: "bun-umap-lease", owner: "crashed", host: "elsewhere", pid: 1, acquiredAtMs: 0, expiresAtMs }));
    await server.put(`${prefix}/lease.json`, lease(Date.now() + 60_000));
    const refused = await rejection(() => ShardedStore.open(location, { writable: true, s3: server.s3 }));
    expect(refused.code).toBe(ErrorCode.STORE);
    expect(refused.message).toContain("process 1 on \"elsewhere\"");
    await server.put(`${prefix}/lease.json`, lease(Date.now() - 1));
    const taken = await ShardedStore.open(location, { writable: true, s3: server.s3 });
    await taken.write(0, new Uint8Array([7]));
    await taken.close();
    expect(await keysUnder(server, prefix)).toEqual(["manifest.json", shardKey(0)]);
  });

  serverTest("bad inputs are typed errors naming the object", moto, async (server) => {
    const s3 = server.s3;
    const noBucket = await rejection(() => ShardedStore.open("s3://no-such-bucket-here/x", { s3 }));
    expect(noBucket.code).toBe(ErrorCode.NOT_FOUND);
    expect(noBucket.message).toContain("no such bucket");
    const noBucketCreate = await rejection(() => ShardedStore.create("s3://no-such-bucket-here/x", { size: MiB, shardSize: MiB, s3 }));
    expect(noBucketCreate.code).toBe(ErrorCode.NOT_FOUND);
    const missing = await rejection(() => ShardedStore.open(`s3://${server.bucket}/nothing-here`, { s3 }));
    expect(missing.code).toBe(ErrorCode.NOT_FOUND);
    expect(missing.message).toContain("nothing-here/manifest.json");
    expect((await rejection(() => ShardedStore.open("s3://UPPER/x", { s3 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect((await rejection(() => ShardedStore.open(`s3://${server.bucket}/x`, { s3: { ...s3, chunkSize: 3 } }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect((await rejection(() => ShardedStore.open(`s3://${server.bucket}/x`, { s3, maxOpenFiles: 4 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect((await rejection(() => ShardedStore.open(`s3://${server.bucket}/x`, { s3, leaseTimeMs: 5 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    const huge = await rejection(() => ShardedStore.create(`s3://${server.bucket}/x`, { size: GiBytes, shardSize: 128 * MiB, s3 }));
    expect(huge.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(huge.message).toContain("shardSize");

    const malformed = freshPrefix("malformed");
    await server.put(`${malformed}/manifest.json`, new TextEncoder().encode("{ not json"));
    const corrupt = await rejection(() => ShardedStore.open(`s3://${server.bucket}/${malformed}`, { s3 }));
    expect(corrupt.code).toBe(ErrorCode.CORRUPT);
    expect(corrupt.message).toContain(`${malformed}/manifest.json`);
    const fields = freshPrefix("fields");
    await server.put(`${fields}/manifest.json`, new TextEncoder().encode(JSON.stringify({ format: "bun-umap-sharded", version: 1, size: -1, shardSize: 4096, shardName: "shard-{index}.bin" })));
    expect((await rejection(() => ShardedStore.open(`s3://${server.bucket}/${fields}`, { s3 }))).code).toBe(ErrorCode.CORRUPT);

    const wrongSize = freshPrefix("wrong-size");
    const store = await ShardedStore.create(`s3://${server.bucket}/${wrongSize}`, { size: 2 * MiB, shardSize: MiB, s3 });
    await store.close();
    await server.put(`${wrongSize}/${shardKey(1)}`, new Uint8Array(1000));
    const shard = await rejection(() => ShardedStore.open(`s3://${server.bucket}/${wrongSize}`, { s3 }));
    expect(shard.code).toBe(ErrorCode.CORRUPT);
    expect(shard.message).toContain(shardKey(1));
    // Over an existing datastore, or a prefix holding other objects: refused, and no lease is left.
    expect((await rejection(() => ShardedStore.create(`s3://${server.bucket}/${wrongSize}`, { size: MiB, shardSize: MiB, s3 }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    const other = freshPrefix("other");
    await server.put(`${other}/notes.txt`, new Uint8Array(3));
    const notEmpty = await rejection(() => ShardedStore.create(`s3://${server.bucket}/${other}`, { size: MiB, shardSize: MiB, s3 }));
    expect(notEmpty.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(notEmpty.message).toContain("not empty");
    expect(await keysUnder(server, other)).toEqual(["notes.txt"]);
  });
});

const GiBytes = 1024 * MiB;

describe("S3 sharded datastores (s3rver: no conditional writes)", () => {
  serverTest("writing is refused with ERR_UMAP_UNSUPPORTED naming If-None-Match, leaving no lease; reading works", s3rver, async (server) => {
    const prefix = freshPrefix("plain");
    const location = `s3://${server.bucket}/${prefix}`;
    const refused = await rejection(() => ShardedStore.create(location, { size: 2 * MiB, shardSize: MiB, s3: server.s3 }));
    expect(refused.code).toBe(ErrorCode.UNSUPPORTED);
    expect(refused.message).toContain("If-None-Match");
    expect(await keysUnder(server, prefix)).toEqual([]);
    // A datastore laid out in the documented format reads right there, read-only.
    await server.put(`${prefix}/manifest.json`, new TextEncoder().encode(JSON.stringify({ format: "bun-umap-sharded", version: 1, size: 2 * MiB, shardSize: MiB, shardName: "shard-{index}.bin" })));
    const shard = new Uint8Array(MiB);
    fillPattern(shard, MiB);
    await server.put(`${prefix}/${shardKey(1)}`, shard);
    expect((await rejection(() => ShardedStore.open(location, { writable: true, s3: server.s3 }))).code).toBe(ErrorCode.UNSUPPORTED);
    const store = await ShardedStore.open(location, { s3: server.s3 });
    const region = await umap(store, { pageSize: 64 * KiB, bufferSize: MiB });
    try {
      expect(region.bytes.subarray(0, MiB).every((byte) => byte === 0)).toBe(true);
      expect(checkPattern(region.view(MiB, MiB), MiB, 64 * KiB)).toBeNull();
    } finally {
      await region.close();
      await store.close();
    }
  });
});

// The conformance suite, writable, on moto. Shards of a size that is not a page multiple, so
// pages straddle shards (a write-back of such a page is two read-modify-writes).
const CONFORMANCE_SHARD_BYTES = 300 * KiB + 7;
const CONFORMANCE_WRITE_BYTES = 96 * KiB;
storeConformance("S3 sharded datastore", async () => {
  if (typeof moto === "string") return moto;
  const server = moto;
  let lastLocation = "";
  return {
    writable: true,
    async make(data, { writable }) {
      lastLocation = `s3://${server.bucket}/${freshPrefix("conformance")}`;
      const store = await ShardedStore.create(lastLocation, { size: data.length, shardSize: CONFORMANCE_SHARD_BYTES, s3: server.s3 });
      for (let offset = 0; offset < data.length; offset += CONFORMANCE_WRITE_BYTES) {
        await store.write(offset, data.subarray(offset, Math.min(offset + CONFORMANCE_WRITE_BYTES, data.length)));
      }
      await store.close();
      return ShardedStore.open(lastLocation, { writable, s3: server.s3 });
    },
    async reopen({ writable }) {
      return ShardedStore.open(lastLocation, { writable, s3: server.s3 });
    },
  };
});
