/**
 * Lz4Store over S3: packed files uploaded by Lz4Store.pack and read through S3Range's ranged
 * GETs (by the fill workers too, sharing its chunk table), on a loopback server (s3rver, else
 * moto). Read-only: the suite joins the conformance suite as a read-only subject.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { GetObjectCommand } from "@aws-sdk/client-s3";
import { writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { ErrorCode, Lz4Store, umap } from "../src/index.ts";
import { storeConformance } from "./conformance.ts";
import { checkPattern, fillPattern, KiB, MiB, tempDir, rejection } from "./helpers.ts";
import { startS3Server, type S3Server } from "./s3-helpers.ts";

const server = await startS3Server(undefined, "umap-lz4");
const dir = tempDir("bun-umap-lz4-s3-");
afterAll(async () => {
  if (typeof server !== "string") await server.stop();
  dir.remove();
});
let count = 0;

/** Pattern data with every third 16 KiB zeroed: both LZ4 and raw chunks. */
function mixedData(byteLength: number): Uint8Array {
  const bytes = new Uint8Array(byteLength);
  fillPattern(bytes, 0);
  for (let at = 0; at < byteLength; at += 48 * KiB) bytes.fill(0, at, Math.min(byteLength, at + 16 * KiB));
  return bytes;
}

/** Packs data into s3://bucket/<new key>; returns the location. */
async function packedOnS3(s3: S3Server, data: Uint8Array, chunkSize = 64 * KiB): Promise<string> {
  const source = join(dir.path, `raw-${count}.bin`);
  writeFileSync(source, data);
  const location = `s3://${s3.bucket}/packed/object-${count++}.lz4`;
  await Lz4Store.pack(source, location, { chunkSize, s3: s3.s3 });
  return location;
}

function serverTest(name: string, run: (s3: S3Server) => Promise<void>): void {
  test(name, async () => {
    if (typeof server === "string") {
      writeSync(2, `${name}: skipped: ${server}\n`);
      return;
    }
    await run(server);
  }, 60_000);
}

describe("Lz4Store over S3", () => {
  serverTest("pack uploads a packed file; a region over it reads every byte back through a smaller buffer", async (s3) => {
    const data = mixedData(6 * MiB + 123);
    const location = await packedOnS3(s3, data);
    const stored = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: location.slice(`s3://${s3.bucket}/`.length) }));
    const packedBytes = await stored.Body!.transformToByteArray();
    expect(new TextDecoder().decode(packedBytes.subarray(0, 8))).toBe("BUNUMLZ4");
    // Compressed: a third of the data is zeros.
    expect(packedBytes.length).toBeLessThan(data.length);

    const store = await Lz4Store.open(location, { s3: { ...s3.s3, chunkSize: 512 * KiB } });
    expect(store.size).toBe(data.length);
    expect(store.writable).toBe(false);
    const region = await umap(store, { pageSize: 64 * KiB, bufferSize: MiB });
    try {
      for (let offset = 0; offset < data.length; offset += 64 * KiB) {
        const length = Math.min(64 * KiB, data.length - offset);
        const view = region.view(offset, length);
        if (Buffer.compare(view, data.subarray(offset, offset + length)) !== 0) throw new Error(`page at ${offset} differs`);
      }
      const stats = region.stats();
      expect(stats.fillErrors).toBe(0);
      expect(stats.evictions).toBeGreaterThan(0);
    } finally {
      await region.close();
      await store.close();
    }
  });

  serverTest("a corrupt chunk is ERR_UMAP_CORRUPT naming it, at the read and at prefetch; a corrupt header at open", async (s3) => {
    const data = mixedData(MiB);
    const location = await packedOnS3(s3, data);
    const key = location.slice(`s3://${s3.bucket}/`.length);
    const stored = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
    const bytes = await stored.Body!.transformToByteArray();
    // A byte in the middle of the first chunk's payload (its record header is 32 bytes after the 128-byte file header).
    const flipped = bytes.slice();
    flipped[128 + 32 + 1000]! ^= 0x40;
    const badKey = `${key}.bad-chunk`;
    await s3.put(badKey, flipped);
    const store = await Lz4Store.open(`s3://${s3.bucket}/${badKey}`, { s3: s3.s3 });
    try {
      const read = await rejection(async () => store.read(0, new Uint8Array(4096)));
      expect(read.code).toBe(ErrorCode.CORRUPT);
      expect(read.message).toContain("chunk 0");
      // Other chunks still read.
      const later = new Uint8Array(4096);
      await store.read(512 * KiB, later);
      expect(checkPattern(later, 512 * KiB, 4096)).toBeNull();
      const region = await umap(store, { pageSize: 64 * KiB, bufferSize: MiB });
      try {
        const prefetched = await rejection(() => region.prefetch(0, 64 * KiB));
        expect(prefetched.message).toContain("chunk 0");
      } finally {
        await region.close();
      }
    } finally {
      await store.close();
    }
    const header = bytes.slice();
    header[0] = 0x58;
    await s3.put(`${key}.bad-header`, header);
    const opened = await rejection(() => Lz4Store.open(`s3://${s3.bucket}/${key}.bad-header`, { s3: s3.s3 }));
    expect(opened.code).toBe(ErrorCode.CORRUPT);
    expect(opened.message).toContain(`${key}.bad-header`);
    await s3.put(`${key}.truncated`, bytes.subarray(0, bytes.length - 100));
    expect((await rejection(() => Lz4Store.open(`s3://${s3.bucket}/${key}.truncated`, { s3: s3.s3 }))).code).toBe(ErrorCode.CORRUPT);
  });

  serverTest("missing objects and buckets are ERR_UMAP_NOT_FOUND; writable opens ERR_UMAP_UNSUPPORTED", async (s3) => {
    const missing = await rejection(() => Lz4Store.open(`s3://${s3.bucket}/no/such.lz4`, { s3: s3.s3 }));
    expect(missing.code).toBe(ErrorCode.NOT_FOUND);
    expect(missing.message).toContain("no/such.lz4");
    const noBucket = await rejection(() => Lz4Store.open("s3://no-such-bucket-lz4/x.lz4", { s3: s3.s3 }));
    expect(noBucket.code).toBe(ErrorCode.NOT_FOUND);
    expect(noBucket.message).toContain("no such bucket");
    const location = await packedOnS3(s3, mixedData(64 * KiB));
    const writable = await rejection(() => Lz4Store.open(location, { writable: true, s3: s3.s3 }));
    expect(writable.code).toBe(ErrorCode.UNSUPPORTED);
    expect(writable.message).toContain("read-only");
    expect((await rejection(() => Lz4Store.open(location, { s3: { ...s3.s3, bucket: "other" } as never }))).code).toBe(ErrorCode.INVALID_ARGUMENT);
    const noSource = await rejection(() => Lz4Store.pack(join(dir.path, "missing.bin"), `s3://${s3.bucket}/never.lz4`, { s3: s3.s3 }));
    expect(noSource.code).toBe(ErrorCode.NOT_FOUND);
  });
});

// Read-only conformance subject: chunks of 16 KiB (smaller than the suite's 64 KiB pages).
storeConformance("Lz4Store on S3", async () => {
  if (typeof server === "string") return server;
  const s3 = server;
  let lastLocation = "";
  return {
    writable: false,
    async make(data) {
      lastLocation = await packedOnS3(s3, data, 16 * KiB);
      return Lz4Store.open(lastLocation, { s3: { ...s3.s3, chunkSize: 256 * KiB } });
    },
    async reopen() {
      return Lz4Store.open(lastLocation, { s3: { ...s3.s3, chunkSize: 256 * KiB } });
    },
  };
});
