/**
 * S3Store against real S3-protocol servers on loopback: s3rver (always, where node can run it)
 * and moto_server (where installed). Each suite starts its server in beforeAll and stops it in
 * afterAll; it skips, printing why, only if the server cannot start. Objects hold the
 * self-identifying pattern of helpers.ts, so a misplaced or stale chunk shows at once.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { S3Store, umap, UmapError } from "../src/index.ts";
import { parseS3Location } from "../stores/lib/s3-location.ts";
import { S3Range } from "../stores/lib/s3-range.ts";
import { SharedChunks } from "../stores/lib/shared-chunks.ts";
import { join } from "node:path";
import { checkPattern, fillPattern, KiB, MiB, random } from "./helpers.ts";
import { storeConformance } from "./conformance.ts";
import { startS3Server, type S3Server, type S3ServerKind } from "./s3-helpers.ts";

const OBJECT_BYTES = 31 * MiB + 4321; // "a 31 MB real object", not a multiple of any page or chunk
const BUFFER_BYTES = 8 * MiB;
/** Generous: the machine is shared, and a stuck request must fail the test rather than hang it. */
const TEST_TIMEOUT_MS = 60_000;

function pattern(byteLength: number, byteOffset = 0): Uint8Array {
  const bytes = new Uint8Array(byteLength);
  fillPattern(bytes, byteOffset);
  return bytes;
}

function sha256(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

/** The rejection of a promise (or throw of a function), which must be a UmapError. */
async function umapError(run: Promise<unknown> | (() => unknown)): Promise<UmapError> {
  try {
    await (typeof run === "function" ? run() : run);
  } catch (error) {
    if (!(error instanceof UmapError)) throw error;
    return error;
  }
  throw new Error("expected a UmapError, nothing was thrown");
}

describe("s3:// locations", () => {
  test("parses bucket and key, and a bucket-only prefix where allowed", () => {
    expect(parseS3Location("s3://my-bucket/a/b.bin")).toEqual({ bucket: "my-bucket", key: "a/b.bin" });
    expect(parseS3Location("S3://data.v2/x")).toEqual({ bucket: "data.v2", key: "x" });
    expect(parseS3Location("s3://bucket", { requireKey: false })).toEqual({ bucket: "bucket", key: "" });
    expect(parseS3Location("s3://bucket/prefix/", { requireKey: false })).toEqual({ bucket: "bucket", key: "prefix/" });
  });

  test.each([
    ["http://bucket/key", "must start with s3://"],
    ["s3:///key", "bucket is missing"],
    ["s3://bucket", "names no object"],
    ["s3://bucket/", "names no object"],
    ["s3://Bad_Bucket/key", "not a valid bucket name"],
    ["s3://ab/key", "not a valid bucket name"],
    ["s3://bucket..x/key", "not a valid bucket name"],
    ["s3://bucket/a\nb", "control character"],
    [`s3://bucket/${"k".repeat(1025)}`, "longer than"],
  ])("%p is ERR_UMAP_INVALID_ARGUMENT (%s)", async (location, why) => {
    const error = await umapError(() => parseS3Location(location));
    expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect(error.message).toContain(why);
  });
});

describe("the chunk table fill workers share", () => {
  test("claims, waits, pins and frees slots; refuses a different object version", () => {
    const table = SharedChunks.create(2, 64 * KiB, 1234)!;
    try {
      const claimed = table.lookup(7, 1000, "always", 2);
      expect(claimed.kind).toBe("claimed");
      if (claimed.kind !== "claimed") return;
      claimed.bytes.fill(7);
      // Another reader of chunk 7 waits for the fetch; read-ahead of 8 may claim the other slot.
      expect(table.lookup(7, 1000, "always", 2).kind).toBe("fetching");
      expect(table.lookup(8, 1000, "if-idle", 1).kind).toBe("full"); // one fetch in flight is the limit
      table.fetched(claimed.slot, true);
      const ready = table.lookup(7, 1000, "always", 2);
      expect(ready.kind).toBe("ready");
      if (ready.kind !== "ready") return;
      expect(ready.bytes.length).toBe(1000);
      expect(ready.bytes.every((byte) => byte === 7)).toBe(true);
      // Two pins, 1000 bytes delivered in all: the chunk stays, so read-ahead that comes late
      // finds it instead of fetching it again, and its slot is the first to be reused.
      table.delivered(claimed.slot, 600);
      table.delivered(ready.slot, 400);
      const kept = table.lookup(7, 1000, "never", 2);
      expect(kept.kind).toBe("ready");
      if (kept.kind === "ready") table.delivered(kept.slot, 0);
      const eight = table.lookup(8, 1000, "always", 2); // the free slot first
      expect(eight.kind).toBe("claimed");
      if (eight.kind === "claimed") expect(eight.slot).not.toBe(claimed.slot);
      const nine = table.lookup(9, 1000, "always", 2); // then the chunk read to the end
      expect(nine.kind).toBe("claimed");
      if (nine.kind === "claimed") expect(nine.slot).toBe(claimed.slot);
      // Versions are kept apart: attaching with another identity or chunk size is refused.
      expect(SharedChunks.attach(table.address, 4321, 64 * KiB)).toBeUndefined();
      expect(SharedChunks.attach(table.address, 1234, 128 * KiB)).toBeUndefined();
      const other = SharedChunks.attach(table.address, 1234, 64 * KiB)!;
      expect(other.slotCount).toBe(2);
      other.detach();
    } finally {
      table.detach();
    }
    // Every holder let go: a thread that comes late finds it gone and makes its own.
    expect(SharedChunks.attach(table.address, 1234, 64 * KiB)).toBeUndefined();
  });
});

describe("S3Store options", () => {
  test.each([
    [{ key: "k" }, "bucket is missing"],
    [{ bucket: "bucket" }, "key is missing"],
    [{ bucket: "bucket", key: "" }, "key is missing"],
    [{ bucket: "B", key: "k" }, "not a valid bucket name"],
    [{ bucket: "bucket", key: "k", chunkSize: 1000 }, "chunkSize"],
    [{ bucket: "bucket", key: "k", chunkSize: 5000 }, "multiple of 4096"],
    [{ bucket: "bucket", key: "k", concurrency: 0 }, "concurrency"],
    [{ bucket: "bucket", key: "k", maxAttempts: 100 }, "maxAttempts"],
    [{ bucket: "bucket", key: "k", endpoint: "ftp://x" }, "endpoint"],
    [{ bucket: "bucket", key: "k", region: "US EAST" }, "region"],
    [{ bucket: "bucket", key: "k", forcePathStyle: "yes" }, "forcePathStyle"],
    [{ bucket: "bucket", key: "k", chunksize: 4096 }, 'unknown option "chunksize"'],
    [{ bucket: "bucket", key: "k", sharedChunks: 4096 }, "not an option"],
  ])("%p is ERR_UMAP_INVALID_ARGUMENT naming %p", async (options, why) => {
    const error = await umapError(() => new S3Store(options as never));
    expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect(error.message).toContain(why);
  });

  test("credentials must be plain strings, and are never shown", async () => {
    const secret = "wJalrXUtnFEMI-not-a-real-secret";
    for (const credentials of [() => ({}), { accessKeyId: "AKIA", secretAccessKey: 42 }, { accessKeyId: secret }]) {
      const error = await umapError(() => new S3Store({ bucket: "bucket", key: "k", credentials } as never));
      expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
      expect(error.message).toContain("credentials");
      expect(error.message).not.toContain(secret);
    }
  });

  test("an endpoint's user name and password stay out of labels and errors", async () => {
    const store = new S3Store({ bucket: "bucket", key: "k", endpoint: "http://user:hunter2@127.0.0.1:9/" });
    expect(store.label).toBe("S3Store s3://bucket/k at http://127.0.0.1:9/");
    const error = await umapError(umap(new S3Store({ bucket: "bucket", key: "k", endpoint: "http://user:hunter2@127.0.0.1:9/", maxAttempts: 1 })));
    expect(error.message).not.toContain("hunter2");
  });

  test("an unreachable endpoint is ERR_UMAP_STORE from umap(), after bounded attempts", async () => {
    // Port 9 (discard) on loopback: nothing listens, so the connection is refused at once.
    const store = new S3Store({
      bucket: "bucket",
      key: "k",
      endpoint: "http://127.0.0.1:9",
      credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "not-used" },
      connectTimeoutMs: 500,
      maxAttempts: 2,
    });
    const error = await umapError(umap(store));
    expect(error.code).toBe("ERR_UMAP_STORE");
    expect(error.message).toContain("s3://bucket/k at http://127.0.0.1:9/");
    expect(error.message).toContain("after 2 attempts");
    expect(error.message).toContain("connection failed");
  });
});

/** The tests every server must pass, then those that need s3rver's fault injection. */
function serverSuite(kind: S3ServerKind, started: S3Server | string): void {
  if (typeof started === "string") console.log(`skipped: S3Store on ${kind}: ${started}`);
  describe.skipIf(typeof started === "string")(`S3Store on ${kind}`, () => {
    const server = started as S3Server;
    const data = pattern(OBJECT_BYTES);
    const key = "dataset/pattern.bin";

    beforeAll(async () => {
      await server.put(key, data);
    });
    afterAll(async () => {
      await server.stop();
    });

    const serverTest = (name: string, run: (server: S3Server) => Promise<void>) => test(name, () => run(server), TEST_TIMEOUT_MS);

    const options = (server: S3Server, extra: object = {}) => ({ bucket: server.bucket, key, ...server.s3, ...extra });

    serverTest("a 31 MB object maps through S3Store and hashes equal, each byte fetched once", async (server) => {
      const before = server.kind === "s3rver" ? await server.served() : undefined;
      // A buffer that holds the object: no page is evicted before it is read, so none is
      // fetched twice and the bytes the server sent can be checked exactly.
      await using region = await umap(new S3Store(options(server)), { bufferSize: 64 * MiB });
      expect(region.byteLength).toBe(OBJECT_BYTES);
      const hasher = new Bun.CryptoHasher("sha256");
      for (let offset = 0; offset < region.byteLength; offset += 4 * MiB) {
        hasher.update(region.view(offset, Math.min(4 * MiB, region.byteLength - offset)));
      }
      expect(hasher.digest("hex")).toBe(sha256(data));
      if (before) {
        // The workers share one chunk table: a sequential scan fetches each byte once.
        const after = await server.served();
        expect(after.getBytes - before.getBytes).toBe(OBJECT_BYTES);
      }
      expect(region.stats().fillErrors).toBe(0);
    });

    serverTest("random reads of the 31 MB object through a buffer a quarter its size are correct", async (server) => {
      await using region = await umap(new S3Store(options(server, { chunkSize: 1 * MiB })), { bufferSize: BUFFER_BYTES });
      const next = random(31);
      for (let i = 0; i < 300; i++) {
        const offset = Math.floor(next() * (OBJECT_BYTES - 64));
        expect(checkPattern(region.view(offset, 64), offset, region.pageSize)).toBeNull();
      }
      const stats = region.stats();
      expect(stats.fillErrors).toBe(0);
      expect(stats.evictions).toBeGreaterThan(0);
      expect(stats.residentPages * region.pageSize).toBeLessThanOrEqual(BUFFER_BYTES);
    });

    serverTest("pages smaller and larger than the chunk size read right, the tail past the end reads zero", async (server) => {
      for (const [pageSize, chunkSize] of [
        [4 * KiB, 64 * KiB],
        [2 * MiB, 256 * KiB],
      ] as const) {
        await using region = await umap(new S3Store(options(server, { chunkSize, concurrency: 3 })), { pageSize, bufferSize: BUFFER_BYTES });
        const next = random(pageSize);
        // A miss costs a round trip (4 KiB pages) or a 2 MiB page of 8 chunks: bound the bytes.
        const reads = pageSize < MiB ? 100 : 25;
        for (let i = 0; i < reads; i++) {
          const offset = Math.floor(next() * (OBJECT_BYTES - 200));
          expect(checkPattern(region.view(offset, 200), offset, pageSize)).toBeNull();
        }
        const tailStart = OBJECT_BYTES - 100;
        expect(checkPattern(region.view(tailStart, 100), tailStart, pageSize)).toBeNull();
        expect(region.stats().fillErrors).toBe(0);
      }
    });

    serverTest("a missing key is ERR_UMAP_NOT_FOUND from umap(), naming bucket and key", async (server) => {
      const error = await umapError(umap(new S3Store({ ...options(server), key: "no/such/key" })));
      expect(error.code).toBe("ERR_UMAP_NOT_FOUND");
      expect(error.message).toContain("no such object");
      expect(error.message).toContain('"no/such/key"');
    });

    serverTest("a missing bucket is ERR_UMAP_NOT_FOUND from umap(), naming the bucket", async (server) => {
      const error = await umapError(umap(new S3Store({ ...options(server), bucket: "no-such-bucket" })));
      expect(error.code).toBe("ERR_UMAP_NOT_FOUND");
      expect(error.message).toContain('no such bucket "no-such-bucket"');
    });

    serverTest("writable: true is refused: S3 objects are read-only stores", async (server) => {
      const error = await umapError(umap(new S3Store(options(server)), { writable: true }));
      expect(error.code).toBe("ERR_UMAP_UNSUPPORTED");
    });

    serverTest("an object replaced while mapped fails with ERR_UMAP_STORE, never mixing versions", async (server) => {
      const replacedKey = "replaced.bin";
      await server.put(replacedKey, pattern(4 * MiB));
      await using region = await umap(new S3Store({ ...options(server), key: replacedKey, chunkSize: 64 * KiB }), {
        bufferSize: BUFFER_BYTES,
        readAhead: 0,
      });
      await region.prefetch(0, 64 * KiB);
      expect(checkPattern(region.view(0, 64 * KiB), 0, region.pageSize)).toBeNull();
      await server.put(replacedKey, pattern(4 * MiB, 12345));
      const error = await umapError(region.prefetch(2 * MiB, 64 * KiB));
      expect(error.code).toBe("ERR_UMAP_STORE");
      expect(error.message).toContain("replaced while mapped");
      // What was read before stays the first version's.
      expect(checkPattern(region.view(0, 64 * KiB), 0, region.pageSize)).toBeNull();
    });

    serverTest("S3Store reads directly once opened, counting its requests", async (server) => {
      const store = new S3Store(options(server, { chunkSize: 256 * KiB }));
      try {
        await store.open();
        expect(store.size).toBe(OBJECT_BYTES);
        const target = new Uint8Array(300 * KiB);
        await store.read(100 * KiB, target); // spans two chunks
        expect(checkPattern(target, 100 * KiB, 4096)).toBeNull();
        // Two chunks for the read; reading from the start counts as a sequential run, so the
        // next chunks were fetched ahead as well, up to the concurrency.
        await store.pending();
        const { bytesFetched, readAheadChunks, requests, retries } = store.stats!;
        expect(readAheadChunks).toBeGreaterThan(0);
        expect(readAheadChunks).toBeLessThanOrEqual(4);
        expect(bytesFetched).toBe((2 + readAheadChunks) * 256 * KiB);
        expect(requests).toBe(1 + 2 + readAheadChunks); // HeadObject, then one GET per chunk
        expect(retries).toBe(0);
        const error = await umapError(store.read(OBJECT_BYTES - 10, new Uint8Array(11)));
        expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
      } finally {
        await store.close();
      }
    });

    if (kind !== "s3rver") return;

    serverTest("wrong credentials are ERR_UMAP_STORE (access denied) from umap(), without the secret", async (server) => {
      const secret = "definitely-not-the-secret";
      const error = await umapError(umap(new S3Store({ ...options(server), credentials: { accessKeyId: "NOBODY", secretAccessKey: secret } })));
      expect(error.code).toBe("ERR_UMAP_STORE");
      expect(error.message).toContain("access denied");
      expect(error.message).not.toContain(secret);
      expect(JSON.stringify(error, Object.getOwnPropertyNames(error))).not.toContain(secret);
    });

    serverTest("throttling, 5xx and resets are retried with backoff, and counted", async (server) => {
      const range = await S3Range.open(options(server, { chunkSize: 64 * KiB }));
      try {
        await server.inject({ status: 503, count: 2, match: key, method: "GET" });
        await server.inject({ status: 500, count: 1, match: key, method: "GET" });
        await server.inject({ status: "reset", count: 1, match: key, method: "GET" });
        const target = new Uint8Array(1000);
        await range.read(70 * KiB, target);
        expect(checkPattern(target, 70 * KiB, 4096)).toBeNull();
        expect(range.stats.retries).toBe(4);
        expect(range.stats.bytesFetched).toBe(64 * KiB);
      } finally {
        await range.close();
      }
    });

    serverTest("failures past maxAttempts reject prefetch() with ERR_UMAP_STORE naming the object and offset", async (server) => {
      await using region = await umap(new S3Store(options(server, { chunkSize: 64 * KiB, maxAttempts: 3 })), {
        bufferSize: BUFFER_BYTES,
        readAhead: 0,
      });
      await server.inject({ status: 503, count: 3, match: key, method: "GET" });
      const error = await umapError(region.prefetch(5 * MiB, 64 * KiB));
      expect(error.code).toBe("ERR_UMAP_STORE");
      expect(error.message).toContain(`s3://${server.bucket}/${key}`);
      expect(error.message).toContain("after 3 attempts");
      expect(error.message).toContain("throttled");
      // The failure poisoned nothing: the same range fills once the server recovers.
      await region.prefetch(5 * MiB, 64 * KiB);
      expect(checkPattern(region.view(5 * MiB, 64 * KiB), 5 * MiB, region.pageSize)).toBeNull();
    });

    serverTest("a fill that fails for good: the access gets SIGBUS, stderr names store, offset and error", async (server) => {
      // Concurrency 1: no read-ahead GET can take the injected failures before the fill's own.
      await server.inject({ status: 503, count: 2, match: key, method: "GET" });
      const script = `
        import { umap, S3Store } from "./src/index.ts";
        const store = new S3Store(${JSON.stringify(options(server, { chunkSize: 64 * KiB, maxAttempts: 2, concurrency: 1 }))});
        const region = await umap(store, { pageSize: 65536, bufferSize: 1 << 20, readAhead: 0 });
        console.log("mapped", region.byteLength);
        console.log("after", region.bytes[5]);
      `;
      const result = Bun.spawnSync([process.execPath, "-e", script], {
        cwd: join(import.meta.dir, ".."),
        stdout: "pipe",
        stderr: "pipe",
        timeout: 30_000,
      });
      expect(result.signalCode).toBe("SIGBUS");
      expect(result.stdout.toString()).toContain(`mapped ${OBJECT_BYTES}`);
      expect(result.stdout.toString()).not.toContain("after");
      const stderr = result.stderr.toString();
      expect(stderr).toContain(`bun-umap: cannot fill S3Store s3://${server.bucket}/${key}`);
      expect(stderr).toContain("at byte offset 0");
      expect(stderr).toContain("after 2 attempts");
      expect(stderr).toContain("SIGBUS");
      expect(stderr).not.toContain(server.credentials.secretAccessKey + '"');
    });

    serverTest("access denied on a read is not retried", async (server) => {
      const range = await S3Range.open(options(server, { chunkSize: 64 * KiB }));
      try {
        await server.inject({ status: 403, count: 1, match: key, method: "GET" });
        const error = await umapError(range.read(0, new Uint8Array(10)));
        expect(error.code).toBe("ERR_UMAP_STORE");
        expect(error.message).toContain("access denied");
        expect(range.stats.retries).toBe(0);
      } finally {
        await range.close();
      }
    });
  });
}

// Started while the file loads, so a server that cannot start skips its suite by name.
serverSuite("s3rver", await startS3Server("s3rver"));
serverSuite("moto", await startS3Server("moto"));

// S3Store joins the store conformance suite, on a server of its own (s3rver, else moto).
let conformanceServer: S3Server | undefined;
let conformanceCount = 0;
storeConformance(
  "S3Store",
  async () => {
    const started = await startS3Server(undefined, "umap-conformance");
    if (typeof started === "string") return started;
    conformanceServer = started;
    let lastKey = "";
    const store = () => new S3Store({ bucket: started.bucket, key: lastKey, ...started.s3, chunkSize: 256 * KiB });
    return {
      writable: false,
      async make(data) {
        lastKey = `conformance/object-${conformanceCount++}.bin`;
        await started.put(lastKey, data);
        return store();
      },
      async reopen() {
        return store();
      },
    };
  },
  async () => {
    await conformanceServer?.stop();
  },
);
