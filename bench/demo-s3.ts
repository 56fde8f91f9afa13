/**
 * The demo's S3 step: uploads the file to S3, maps the object through S3Store with the same
 * small buffer, hashes it through the mapping and checks the SHA-256 against the file's.
 *
 * Without S3_ENDPOINT it starts a loopback S3 server (s3rver, else moto_server) for the step
 * and stops it afterwards. With S3_ENDPOINT set it uses that service: S3_BUCKET names an
 * existing bucket (required), S3_REGION the region (default us-east-1), credentials come from the
 * SDK's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, ...); the object is
 * uploaded as S3_KEY (default bun-umap-demo/<file name>) and deleted afterwards.
 *
 *   bun bench/demo-s3.ts [FILE]        (also run by bench/demo.ts)
 */
import { DeleteObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { S3Store, umap, UmapError, type Region, type S3Options } from "../src/index.ts";
import { startS3Server } from "./lib/s3-server.ts";

export interface DemoS3Options {
  path: string;
  expectedDigest: string;
  bufferSize: number;
  pageSize?: number;
  /** Hashes a region through its mapping (the demo's own loop, progress bar included). */
  hash(region: Region): { digest: string; seconds: number };
}

/** Runs the step; resolves true if the digest matched, false if it differed or the step failed. */
export async function demoS3(options: DemoS3Options): Promise<boolean> {
  const endpoint = process.env.S3_ENDPOINT;
  let where: { s3: S3Options & { region: string }; bucket: string; client: S3Client; stop(): Promise<void>; name: string };
  if (endpoint) {
    const bucket = process.env.S3_BUCKET;
    if (!bucket) {
      console.error("s3       S3_ENDPOINT is set but S3_BUCKET is not: name an existing bucket to upload the file to");
      return false;
    }
    const s3 = { endpoint, region: process.env.S3_REGION ?? "us-east-1", forcePathStyle: process.env.S3_FORCE_PATH_STYLE !== "false" };
    const client = new S3Client(s3);
    where = { s3, bucket, client, name: new URL(endpoint).host, stop: async () => client.destroy() };
  } else {
    const server = await startS3Server(undefined, "bun-umap-demo");
    if (typeof server === "string") {
      console.log(`s3       skipped: ${server} (set S3_ENDPOINT and S3_BUCKET to use a real service)`);
      return true;
    }
    where = { s3: server.s3, bucket: server.bucket, client: server.client, name: `${server.kind} on loopback`, stop: () => server.stop() };
  }

  const key = process.env.S3_KEY ?? `bun-umap-demo/${basename(options.path)}`;
  try {
    const started = performance.now();
    await where.client.send(new PutObjectCommand({ Bucket: where.bucket, Key: key, Body: readFileSync(options.path) }));
    console.log(`s3       uploaded to s3://${where.bucket}/${key} (${where.name}) in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    const store = new S3Store({ bucket: where.bucket, key, ...where.s3 });
    const region = await umap(store, { bufferSize: options.bufferSize, ...(options.pageSize === undefined ? {} : { pageSize: options.pageSize }) });
    let result: { digest: string; seconds: number };
    try {
      result = options.hash(region);
    } finally {
      await region.close();
    }
    const mbPerSecond = (region.byteLength / result.seconds / 1e6).toFixed(0);
    console.log(`s3       sha256 ${result.digest}  ${mbPerSecond} MB/s through S3Store`);
    if (result.digest !== options.expectedDigest) {
      console.error("MISMATCH: the bytes read through S3Store differ from the file");
      return false;
    }
    console.log("match    the S3 object reads the file exactly");
    return true;
  } catch (error) {
    if (!(error instanceof UmapError)) throw error;
    console.error(`demo: s3: ${error.code}: ${error.message}`);
    return false;
  } finally {
    if (endpoint) await where.client.send(new DeleteObjectCommand({ Bucket: where.bucket, Key: key })).catch(() => {});
    await where.stop();
  }
}

if (import.meta.main) {
  const path = Bun.argv[2] ?? process.execPath;
  const bytes = readFileSync(path);
  const expectedDigest = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
  const ok = await demoS3({
    path,
    expectedDigest,
    bufferSize: 16 * 1024 * 1024,
    hash(region) {
      const hasher = new Bun.CryptoHasher("sha256");
      const started = performance.now();
      for (let offset = 0; offset < region.byteLength; offset += 4 * 1024 * 1024) {
        hasher.update(region.view(offset, Math.min(4 * 1024 * 1024, region.byteLength - offset)));
      }
      return { digest: hasher.digest("hex"), seconds: (performance.now() - started) / 1000 };
    },
  });
  process.exitCode = ok ? 0 : 1;
}
