/**
 * Sequential scan of an S3 object through S3Store, against the ceiling: the same SDK client
 * doing parallel ranged GETs of the whole object at the same concurrency and range size. Starts
 * a loopback server (s3rver, or moto with --server moto) unless S3_ENDPOINT is set, uploads an
 * object of self-identifying bytes, and prints throughput, the bytes the server sent (s3rver)
 * and a checksum of what was read, so the work cannot be optimized away.
 *
 *   bun bench/s3-scan.ts [--server s3rver|moto] [--size 128m] [--chunk-size 8m] [--concurrency 4]
 *                        [--page-size 1m] [--fillers N] [--buffer-size 64m]
 */
import { GetObjectCommand } from "@aws-sdk/client-s3";
import { parseArgs } from "node:util";
import { S3Store, umap } from "../src/index.ts";
import { fillPattern } from "../test/helpers.ts";
import { startS3Server, type S3ServerKind } from "../test/s3-helpers.ts";

const MiB = 1024 * 1024;
const { values } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    server: { type: "string", default: "s3rver" },
    size: { type: "string", default: "128m" },
    "chunk-size": { type: "string", default: "8m" },
    concurrency: { type: "string", default: "4" },
    "page-size": { type: "string", default: "1m" },
    "buffer-size": { type: "string", default: "64m" },
    fillers: { type: "string" },
  },
});

function size(text: string): number {
  const match = /^(\d+)([kmg]?)$/i.exec(text);
  if (!match) throw new Error(`not a size: ${text}`);
  return Number(match[1]) * { "": 1, k: 1024, m: MiB, g: 1024 * MiB }[match[2]!.toLowerCase() as "" | "k" | "m" | "g"];
}

const objectBytes = size(values.size!);
const chunkSize = size(values["chunk-size"]!);
const concurrency = Number(values.concurrency);
const pageSize = size(values["page-size"]!);
const bufferSize = size(values["buffer-size"]!);
const fillers = values.fillers === undefined ? undefined : Number(values.fillers);

const server = await startS3Server(values.server as S3ServerKind);
if (typeof server === "string") {
  console.error(`s3-scan: ${server}`);
  process.exit(2);
}
try {
  const data = new Uint8Array(objectBytes);
  fillPattern(data, 0);
  const key = "scan.bin";
  await server.put(key, data);
  const expected = new Bun.CryptoHasher("sha256").update(data).digest("hex");
  console.log(`server   ${server.kind} at ${server.endpoint}; object ${objectBytes / MiB} MiB, ranges of ${chunkSize / MiB} MiB, concurrency ${concurrency}`);

  // The ceiling: parallel ranged GETs, each worker of the pool taking the next range.
  {
    const before = server.kind === "s3rver" ? await server.served() : undefined;
    const started = performance.now();
    const hasher = new Bun.CryptoHasher("sha256");
    const parts: Uint8Array[] = [];
    let next = 0;
    const rangeCount = Math.ceil(objectBytes / chunkSize);
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let index = next++; index < rangeCount; index = next++) {
          const start = index * chunkSize;
          const end = Math.min(objectBytes, start + chunkSize) - 1;
          const response = await server.client.send(new GetObjectCommand({ Bucket: server.bucket, Key: key, Range: `bytes=${start}-${end}` }));
          parts[index] = await response.Body!.transformToByteArray();
        }
      }),
    );
    for (const part of parts) hasher.update(part);
    const seconds = (performance.now() - started) / 1000;
    const after = server.kind === "s3rver" ? await server.served() : undefined;
    const sent = before && after ? `, server sent ${((after.getBytes - before.getBytes) / objectBytes).toFixed(2)}x the object` : "";
    console.log(`ceiling  ${(objectBytes / seconds / 1e6).toFixed(0)} MB/s (${seconds.toFixed(2)} s)${sent}, sha256 ${hasher.digest("hex") === expected ? "ok" : "MISMATCH"}`);
  }

  {
    const before = server.kind === "s3rver" ? await server.served() : undefined;
    const store = new S3Store({ bucket: server.bucket, key, ...server.s3, chunkSize, concurrency });
    const started = performance.now();
    await using region = await umap(store, { pageSize, bufferSize, ...(fillers === undefined ? {} : { fillers }) });
    const hasher = new Bun.CryptoHasher("sha256");
    for (let offset = 0; offset < region.byteLength; offset += 4 * MiB) {
      hasher.update(region.view(offset, Math.min(4 * MiB, region.byteLength - offset)));
    }
    const seconds = (performance.now() - started) / 1000;
    const after = server.kind === "s3rver" ? await server.served() : undefined;
    const sent = before && after ? `, server sent ${((after.getBytes - before.getBytes) / objectBytes).toFixed(2)}x the object` : "";
    const stats = region.stats();
    console.log(
      `S3Store  ${(objectBytes / seconds / 1e6).toFixed(0)} MB/s (${seconds.toFixed(2)} s)${sent}, sha256 ${hasher.digest("hex") === expected ? "ok" : "MISMATCH"}; ` +
        `faults ${stats.faults}, fill requests ${stats.fillRequests}, read-ahead pages ${stats.readAheadPages}`,
    );
  }
} finally {
  await server.stop();
}
