/**
 * Loopback S3 servers for the tests, the benchmarks and the demo (test/s3-helpers.ts re-exports
 * this module): s3rver (the npm package, run with node) and moto_server (Python, where
 * installed). Each listens on 127.0.0.1 on a port of its own choosing, is started here with a
 * hard time limit, and is stopped by stop() (or, for s3rver, when this process's end of its stdin
 * closes, so a crashed test run leaves nothing behind).
 */
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { S3Credentials } from "../../src/index.ts";

export type S3ServerKind = "s3rver" | "moto";

export interface S3Server {
  readonly kind: S3ServerKind;
  /** The server process, for reading its CPU time (benchmarks). */
  readonly pid: number;
  readonly endpoint: string;
  readonly credentials: S3Credentials;
  readonly bucket: string;
  readonly client: S3Client;
  /** Options for S3Store and friends that reach this server. */
  readonly s3: { endpoint: string; credentials: S3Credentials; region: string; forcePathStyle: boolean };
  put(key: string, bytes: Uint8Array): Promise<void>;
  /**
   * s3rver only: the next `count` requests whose path contains `match` (and of `method`, if
   * given) fail with `status` (a number, or "reset" to drop the connection).
   */
  inject(fault: { status: number | "reset"; count: number; match?: string; method?: string }): Promise<void>;
  /** s3rver only: requests served and GET body bytes sent since start. */
  served(): Promise<{ requests: number; getBytes: number }>;
  stop(): Promise<void>;
}

/** How long a server may take to start before we give up on it. */
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 5_000;
const MOTO_PATHS = ["/root/.pyenv/shims/moto_server"];

export const S3RVER_CREDENTIALS: S3Credentials = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
const MOTO_CREDENTIALS: S3Credentials = { accessKeyId: "testing", secretAccessKey: "testing" };

/** Where moto_server is installed, or undefined. */
export function motoServerPath(): string | undefined {
  return Bun.which("moto_server") ?? MOTO_PATHS.find((path) => existsSync(path));
}

/**
 * Starts a server of the given kind, or the first that starts of s3rver then moto, and creates
 * `bucket` on it. Resolves with the server, or with a string saying why none could start.
 */
export async function startS3Server(kind?: S3ServerKind, bucket = "umap-test"): Promise<S3Server | string> {
  const kinds: S3ServerKind[] = kind ? [kind] : ["s3rver", "moto"];
  const reasons: string[] = [];
  for (const candidate of kinds) {
    try {
      const server = candidate === "s3rver" ? await startS3rver(bucket) : await startMoto(bucket);
      if (typeof server === "string") {
        reasons.push(`${candidate}: ${server}`);
        continue;
      }
      return server;
    } catch (error) {
      reasons.push(`${candidate}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return `no loopback S3 server could start (${reasons.join("; ")})`;
}

async function startS3rver(bucket: string): Promise<S3Server | string> {
  const node = Bun.which("node");
  if (!node) return "node is not on PATH";
  const dir = tempDir("bun-umap-s3rver-");
  const script = new URL("../../test/fixtures/s3-server.mjs", import.meta.url).pathname;
  // Its stderr is not a pipe for the reason given in startMoto; s3rver runs silent anyway.
  const child = Bun.spawn([node, script, dir.path], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const line = await firstLine(child.stdout, START_TIMEOUT_MS, /^\{.*\}$/);
  if (!line) {
    child.kill();
    dir.remove();
    return `did not start within ${START_TIMEOUT_MS} ms (its errors are on stderr above)`;
  }
  const { port } = JSON.parse(line) as { port: number };
  const endpoint = `http://127.0.0.1:${port}`;
  return finish("s3rver", child.pid, endpoint, S3RVER_CREDENTIALS, bucket, async () => {
    child.stdin.end();
    await Promise.race([child.exited, unrefSleep(STOP_TIMEOUT_MS)]);
    child.kill();
    dir.remove();
  });
}

async function startMoto(bucket: string): Promise<S3Server | string> {
  const path = motoServerPath();
  if (!path) return "moto_server is not installed";
  // moto logs every request. Its log goes to a file, never to a pipe this process drains: while
  // a test's main thread is parked in a page fault nothing drains a pipe, moto blocks writing to
  // it once it is full, and the fill that parked the thread never gets its answer.
  const dir = tempDir("bun-umap-moto-");
  const logPath = join(dir.path, "moto.log");
  const child = Bun.spawn([path, "-H", "127.0.0.1", "-p", "0"], { stdin: "ignore", stdout: Bun.file(logPath), stderr: Bun.file(logPath) });
  // Werkzeug says where it listens.
  const deadlineMs = performance.now() + START_TIMEOUT_MS;
  let port: number | undefined;
  while (port === undefined && performance.now() < deadlineMs && child.exitCode === null) {
    await Bun.sleep(50);
    const match = /Running on http:\/\/127\.0\.0\.1:(\d+)/.exec(existsSync(logPath) ? readFileSync(logPath, "utf8") : "");
    if (match) port = Number(match[1]);
  }
  if (port === undefined) {
    child.kill();
    dir.remove();
    return `did not start within ${START_TIMEOUT_MS} ms`;
  }
  return finish("moto", child.pid, `http://127.0.0.1:${port}`, MOTO_CREDENTIALS, bucket, async () => {
    child.kill();
    await Promise.race([child.exited, unrefSleep(STOP_TIMEOUT_MS)]);
    child.kill(9);
    dir.remove();
  });
}

async function finish(
  kind: S3ServerKind,
  pid: number,
  endpoint: string,
  credentials: S3Credentials,
  bucket: string,
  stop: () => Promise<void>,
): Promise<S3Server> {
  const s3 = { endpoint, credentials, region: "us-east-1", forcePathStyle: true };
  const client = new S3Client({ ...s3, maxAttempts: 2 });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }), { abortSignal: AbortSignal.timeout(START_TIMEOUT_MS) });
  } catch (error) {
    client.destroy();
    await stop();
    throw error;
  }
  const control = async (path: string, init?: RequestInit) => {
    if (kind !== "s3rver") throw new Error(`${kind} has no fault injection`);
    const response = await fetch(`${endpoint}${path}`, { ...init, signal: AbortSignal.timeout(STOP_TIMEOUT_MS) });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response;
  };
  return {
    kind,
    pid,
    endpoint,
    credentials,
    bucket,
    client,
    s3,
    async put(key, bytes) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: bytes }));
    },
    async inject({ status, count, match = "", method = "" }) {
      const query = new URLSearchParams({ status: String(status), count: String(count), match, method });
      await control(`/__faults?${query}`, { method: "POST" });
    },
    async served() {
      return (await (await control("/__served")).json()) as { requests: number; getBytes: number };
    },
    async stop() {
      client.destroy();
      await stop();
    },
  };
}

/** A new temporary directory, removed by remove(). */
function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** The first line of a stream matching `pattern`, or undefined after timeoutMs or at its end. */
async function firstLine(stream: ReadableStream<Uint8Array>, timeoutMs: number, pattern: RegExp): Promise<string | undefined> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const deadline = unrefSleep(timeoutMs).then(() => undefined);
  try {
    for (;;) {
      const next = await Promise.race([reader.read(), deadline]);
      if (!next || next.done) return undefined;
      text += decoder.decode(next.value, { stream: true });
      for (const line of text.split("\n")) if (pattern.test(line)) return line;
      // Bound what is kept of a chatty stream.
      if (text.length > 64 * 1024) text = text.slice(-4096);
    }
  } finally {
    // Let the rest of the output drain unread: the child must never block on a full pipe.
    reader.releaseLock();
    void stream.pipeTo(new WritableStream()).catch(() => {});
  }
}

/**
 * A sleep that does not keep the process alive: the time limits raced against a server here must
 * not hold a script that is done (Bun.sleep's timer does, for its whole length: the demo waited
 * 17 s after its last step).
 */
function unrefSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
