/**
 * Byte-range reads of one S3 object: the access S3Store is built on, and that other stores (an
 * LZ4 datastore) can sit on as they sit on a local file.
 *
 * - The object's size and ETag are read once (HeadObject) and pinned: every ranged GetObject
 *   sends `If-Match` on that ETag and checks the ETag it gets back, so an object replaced while
 *   mapped fails with a typed error instead of mixing pages of two versions.
 * - Bytes are fetched in aligned chunks of `chunkSize` bytes, whatever the size of the read, and
 *   kept until every byte of the chunk has been read once (or the cache needs the room). A read
 *   that continues a sequential run also starts the next chunks, up to `concurrency` GETs in
 *   flight, so a scan keeps the connection busy while the reader copies.
 * - Throttling, 5xx answers, resets, timeouts and truncated bodies are retried with capped
 *   exponential backoff and full jitter, bounded in attempts and in total time.
 *
 * Credentials never appear in messages: labels and errors name the bucket, key and endpoint
 * host only.
 */
import { isMainThread } from "node:worker_threads";
import { GetObjectCommand, HeadBucketCommand, HeadObjectCommand, S3Client, type S3ClientConfig } from "@aws-sdk/client-s3";
import { ErrorCode, UmapError, describeError, describeValue, invalidArgument } from "../../src/errors.ts";
import { checkBucket, checkKey } from "./s3-location.ts";
import { SharedChunks, SHARED_SLOTS_MAX } from "./shared-chunks.ts";
import type { ByteRange } from "./byte-range.ts";

export type { ByteRange } from "./byte-range.ts";

/** Static credentials: each worker thread gets a copy, so they must be plain data. */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** How to reach S3 and how to fetch from it. Every field is optional. */
export interface S3Options {
  /** Service URL, for S3-compatible stores ("http://127.0.0.1:9000"). Default: AWS's own. */
  endpoint?: string;
  /** Default: the SDK's (AWS_REGION, the shared config), or "us-east-1" with an `endpoint`. */
  region?: string;
  /** Default: the SDK's credential chain, in every worker. */
  credentials?: S3Credentials;
  /** Address buckets as a path (`endpoint/bucket/key`). Default: true with an `endpoint`. */
  forcePathStyle?: boolean;
  /** Bytes per ranged GET, independent of the page size. Default 8 MiB. */
  chunkSize?: number;
  /** Read-ahead GETs in flight at once, all threads sharing the chunk table together. Default 4. */
  concurrency?: number;
  /** How long establishing a connection may take. Default 5000. */
  connectTimeoutMs?: number;
  /** How long one request may take, body included. Default 60000. */
  requestTimeoutMs?: number;
  /** Attempts per request, the first included (1 = no retries). Default 6. */
  maxAttempts?: number;
  /** Total time a request may spend on attempts and backoff before it fails. Default 30000. */
  retryTimeMs?: number;
}

/** One object, and optionally the identity already read at open (so workers skip HeadObject). */
export interface S3RangeConfig extends S3Options {
  bucket: string;
  key: string;
  /** Size in bytes, as HeadObject gave it where the object was first opened. */
  size?: number;
  /** ETag, as HeadObject gave it where the object was first opened. */
  etag?: string;
  /**
   * Internal: the address of the chunk table of the instance that first opened the object, for
   * the fill workers to share (see shared-chunks.ts). Accepted only in worker threads.
   */
  sharedChunks?: number;
}

export const S3_DEFAULTS = {
  chunkSize: 8 * 1024 * 1024,
  concurrency: 4,
  connectTimeoutMs: 5_000,
  requestTimeoutMs: 60_000,
  maxAttempts: 6,
  retryTimeMs: 30_000,
} as const;

const CHUNK_SIZE_MIN = 4096;
const CHUNK_SIZE_MAX = 1024 * 1024 * 1024;
const CONCURRENCY_MAX = 64;
const MAX_ATTEMPTS_MAX = 20;
const TIMEOUT_MS_MAX = 10 * 60_000;
/** First backoff ceiling; doubles per attempt up to BACKOFF_CAP_MS (full jitter below it). */
export const BACKOFF_BASE_MS = 50;
export const BACKOFF_CAP_MS = 2_000;
/** Chunks the shared table holds per GET allowed in flight: room to fetch ahead while others are read. */
const TABLE_SLOTS_PER_REQUEST = 2;
/** Extra slots for demand fetches of chunks the read-ahead did not foresee. */
const TABLE_SLOTS_EXTRA = 4;
/** Address space one chunk table may reserve (only the chunks used take memory). */
const TABLE_BYTES_MAX = 4 * 1024 * 1024 * 1024;
/** How often a read waiting for another thread's fetch of its chunk looks again. */
const SHARED_POLL_MS = 1;

const OPTION_NAMES = new Set([
  "bucket",
  "key",
  "size",
  "etag",
  "endpoint",
  "region",
  "credentials",
  "forcePathStyle",
  "chunkSize",
  "concurrency",
  "connectTimeoutMs",
  "requestTimeoutMs",
  "maxAttempts",
  "retryTimeMs",
  "sharedChunks",
]);

/** Checks options and fills in defaults; throws ERR_UMAP_INVALID_ARGUMENT naming the option. */
/** Options with every default filled in. */
export type ResolvedS3Config = S3RangeConfig & Required<Pick<S3RangeConfig, keyof typeof S3_DEFAULTS>>;

export function resolveS3Config(config: S3RangeConfig, what: string): ResolvedS3Config {
  if (typeof config !== "object" || config === null) invalidArgument(`${what}: options must be an object with bucket and key, got ${describeValue(config)}`);
  for (const name of Object.keys(config)) {
    if (!OPTION_NAMES.has(name)) invalidArgument(`${what}: unknown option ${JSON.stringify(name)}`);
  }
  checkBucket(config.bucket, what);
  checkKey(config.key, what);
  if (config.endpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = typeof config.endpoint === "string" ? new URL(config.endpoint) : undefined;
    } catch {
      url = undefined;
    }
    if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
      invalidArgument(`${what}: option endpoint must be an http:// or https:// URL, got ${typeof config.endpoint === "string" ? JSON.stringify(redactUrl(config.endpoint)) : typeof config.endpoint}`);
    }
  }
  if (config.region !== undefined && (typeof config.region !== "string" || !/^[a-z0-9-]{1,64}$/.test(config.region))) {
    invalidArgument(`${what}: option region must be a region name such as "us-east-1", got ${describeValue(config.region)}`);
  }
  if (config.credentials !== undefined) {
    const credentials = config.credentials as unknown;
    if (
      typeof credentials !== "object" ||
      credentials === null ||
      typeof (credentials as S3Credentials).accessKeyId !== "string" ||
      typeof (credentials as S3Credentials).secretAccessKey !== "string" ||
      ((credentials as S3Credentials).sessionToken !== undefined && typeof (credentials as S3Credentials).sessionToken !== "string")
    ) {
      // Never echo the value: it may hold a secret.
      invalidArgument(
        `${what}: option credentials must be { accessKeyId, secretAccessKey, sessionToken? } strings (each worker gets a copy, ` +
          "so a provider function cannot be used: omit credentials to use the SDK's credential chain in every worker)",
      );
    }
  }
  if (config.forcePathStyle !== undefined && typeof config.forcePathStyle !== "boolean") {
    invalidArgument(`${what}: option forcePathStyle must be a boolean, got ${describeValue(config.forcePathStyle)}`);
  }
  const chunkSize = wholeOption(config, "chunkSize", CHUNK_SIZE_MIN, CHUNK_SIZE_MAX, what);
  const concurrency = wholeOption(config, "concurrency", 1, CONCURRENCY_MAX, what);
  const connectTimeoutMs = wholeOption(config, "connectTimeoutMs", 1, TIMEOUT_MS_MAX, what);
  const requestTimeoutMs = wholeOption(config, "requestTimeoutMs", 1, TIMEOUT_MS_MAX, what);
  const maxAttempts = wholeOption(config, "maxAttempts", 1, MAX_ATTEMPTS_MAX, what);
  const retryTimeMs = wholeOption(config, "retryTimeMs", 1, TIMEOUT_MS_MAX, what);
  if (config.size !== undefined && (!Number.isSafeInteger(config.size) || config.size < 0)) {
    invalidArgument(`${what}: size must be a whole number of bytes, got ${describeValue(config.size)}`);
  }
  if (config.etag !== undefined && typeof config.etag !== "string") invalidArgument(`${what}: etag must be a string`);
  if (config.sharedChunks !== undefined && (isMainThread || !Number.isSafeInteger(config.sharedChunks) || config.sharedChunks <= 0)) {
    invalidArgument(`${what}: sharedChunks is set by umap() for its fill workers, not an option`);
  }
  if (chunkSize % 4096 !== 0) invalidArgument(`${what}: option chunkSize must be a multiple of 4096, got ${chunkSize}`);
  return { ...config, chunkSize, concurrency, connectTimeoutMs, requestTimeoutMs, maxAttempts, retryTimeMs };
}

function wholeOption(config: S3RangeConfig, name: keyof typeof S3_DEFAULTS, min: number, max: number, what: string): number {
  const value = config[name] ?? S3_DEFAULTS[name];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    invalidArgument(`${what}: option ${name} must be a whole number from ${min} to ${max}, got ${describeValue(value)}`);
  }
  return value;
}

/** A URL without its user name and password, for messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.username || parsed.password) {
      parsed.username = "";
      parsed.password = "";
    }
    parsed.search = "";
    return parsed.href;
  } catch {
    return "(an endpoint that is not a URL)";
  }
}

/** How a failed request is treated. */
export interface Failure {
  retryable: boolean;
  /** What went wrong, in a few words, without secrets. */
  reason: string;
  code: ErrorCode;
}

const NETWORK_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "ENETUNREACH",
  "EHOSTUNREACH",
  "EAI_AGAIN",
  "ENOTFOUND",
  "UND_ERR_SOCKET",
]);
const THROTTLE_NAMES = new Set(["SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestThrottled"]);

/** Sorts an error from the SDK (or a short body) into retryable or not, with a code for users. */
export function classify(error: unknown): Failure {
  if (error instanceof UmapError) return { retryable: false, reason: error.message, code: error.code };
  if (error instanceof ShortBodyError) return { retryable: true, reason: error.message, code: ErrorCode.STORE };
  const e = error as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  const name = e.name ?? "";
  const code = e.code ?? "";
  if (THROTTLE_NAMES.has(name) || status === 429 || status === 503) return { retryable: true, reason: `throttled (${name || status})`, code: ErrorCode.STORE };
  if (status !== undefined && status >= 500) return { retryable: true, reason: `server error ${status} (${name})`, code: ErrorCode.STORE };
  if (name === "TimeoutError" || name === "AbortError" || name === "RequestTimeout" || name === "RequestTimeoutException") {
    return { retryable: true, reason: `timed out (${name})`, code: ErrorCode.STORE };
  }
  if (NETWORK_CODES.has(code) || NETWORK_CODES.has(name) || /socket hang up|ECONNRESET|ECONNREFUSED|network|connect/i.test(e.message ?? "")) {
    return { retryable: true, reason: `connection failed (${code || name || e.message})`, code: ErrorCode.STORE };
  }
  if (name === "NoSuchKey" || name === "NotFound" || status === 404) return { retryable: false, reason: "no such object", code: ErrorCode.NOT_FOUND };
  if (name === "NoSuchBucket") return { retryable: false, reason: "no such bucket", code: ErrorCode.NOT_FOUND };
  if (name === "AccessDenied" || name === "Forbidden" || status === 403 || status === 401) {
    return { retryable: false, reason: `access denied (${name || status}): check the credentials and the bucket's policy`, code: ErrorCode.STORE };
  }
  if (name === "PreconditionFailed" || status === 412) {
    return { retryable: false, reason: "the object was replaced while mapped (its ETag no longer matches)", code: ErrorCode.STORE };
  }
  return { retryable: false, reason: describeError(error), code: ErrorCode.STORE };
}

/** A body that ended before the bytes its range promised: the connection broke, so retry. */
class ShortBodyError extends Error {}

/** Counters of one instance (one worker thread's view). */
export interface S3RangeStats {
  requests: number;
  retries: number;
  bytesFetched: number;
  readAheadChunks: number;
  /** Reads served by a chunk already in the table. */
  chunkHits: number;
  /** Reads that waited for another thread's fetch of their chunk. */
  sharedWaits: number;
}

export class S3Range implements ByteRange {
  readonly bucket: string;
  readonly key: string;
  readonly size: number;
  readonly etag: string | undefined;
  readonly chunkSize: number;
  readonly concurrency: number;
  readonly stats: S3RangeStats = { requests: 0, retries: 0, bytesFetched: 0, readAheadChunks: 0, chunkHits: 0, sharedWaits: 0 };
  readonly #client: S3Client;
  readonly #config: ResolvedS3Config;
  readonly #label: string;
  /** Chunks fetched and not yet read, shared with the other threads reading this object. */
  readonly #table: SharedChunks | undefined;
  /** GETs of chunks this instance has in flight. */
  #inFlight = 0;
  /** Read-ahead fetches not awaited by any read. */
  readonly #background = new Set<Promise<void>>();
  /** Last chunk a read ended in, for spotting sequential runs; -2 before any read. */
  #lastChunkIndex = -2;
  #closed = false;
  /** Aborts every request when the range is closed. */
  readonly #abort = new AbortController();

  private constructor(
    config: ResolvedS3Config,
    client: S3Client,
    size: number,
    etag: string | undefined,
    label: string,
    table: SharedChunks | undefined,
  ) {
    this.#table = table;
    this.#config = config;
    this.#client = client;
    this.bucket = config.bucket;
    this.key = config.key;
    this.size = size;
    this.etag = etag;
    this.chunkSize = config.chunkSize;
    this.concurrency = config.concurrency;
    this.#label = label;
  }

  /** "s3://bucket/key at http://127.0.0.1:9000/" (never with credentials). */
  static labelFor(config: Pick<S3RangeConfig, "bucket" | "key" | "endpoint">): string {
    return `s3://${config.bucket}/${config.key}${config.endpoint ? ` at ${redactUrl(config.endpoint)}` : ""}`;
  }

  get label(): string {
    return this.#label;
  }

  /**
   * Opens the object: checks the options, then learns its size and ETag with HeadObject unless
   * the config carries them. Errors: ERR_UMAP_INVALID_ARGUMENT (options), ERR_UMAP_NOT_FOUND
   * (no such bucket or object), ERR_UMAP_STORE (access denied, unreachable endpoint, ...).
   */
  static async open(config: S3RangeConfig, what = "S3"): Promise<S3Range> {
    const resolved = resolveS3Config(config, `${what} ${S3Range.labelFor(config)}`);
    const label = `${what} ${S3Range.labelFor(resolved)}`;
    const client = new S3Client(clientConfig(resolved));
    let range: S3Range;
    if (resolved.size !== undefined) {
      range = new S3Range(resolved, client, resolved.size, resolved.etag, label, S3Range.#tableFor(resolved, resolved.size, resolved.etag));
    } else {
      // Only for HeadObject: it reads nothing, so it needs no chunk table.
      const probe = new S3Range(resolved, client, 0, undefined, label, undefined);
      try {
        const head = await probe.#withRetries("HeadObject", (signal) =>
          client.send(new HeadObjectCommand({ Bucket: resolved.bucket, Key: resolved.key }), { abortSignal: signal }),
        );
        const size = head.ContentLength;
        if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
          throw new UmapError(ErrorCode.STORE, `${label}: HeadObject gave no usable size (${String(size)})`);
        }
        range = new S3Range(resolved, client, size, head.ETag, label, S3Range.#tableFor(resolved, size, head.ETag));
      } catch (error) {
        client.destroy();
        if (error instanceof UmapError && error.code === ErrorCode.NOT_FOUND) throw await probe.#whichIsMissing(error);
        throw error;
      }
      range.stats.requests = probe.stats.requests;
      range.stats.retries = probe.stats.retries;
    }
    return range;
  }

  /** The table a worker shares with the instance that opened the object, or a new one. */
  static #tableFor(config: ResolvedS3Config, size: number, etag: string | undefined): SharedChunks {
    // Which version of which object the table caches: a table is shared only for the same one.
    const identity = Bun.hash.crc32(`${config.endpoint ?? ""}\n${config.bucket}\n${config.key}\n${etag ?? ""}\n${size}`);
    if (config.sharedChunks !== undefined) {
      const shared = SharedChunks.attach(config.sharedChunks, identity, config.chunkSize);
      if (shared) return shared;
    }
    const slotCount = Math.max(
      2,
      Math.min(SHARED_SLOTS_MAX, config.concurrency * TABLE_SLOTS_PER_REQUEST + TABLE_SLOTS_EXTRA, Math.floor(TABLE_BYTES_MAX / config.chunkSize)),
    );
    const table = SharedChunks.create(slotCount, config.chunkSize, identity);
    if (!table) {
      throw new UmapError(ErrorCode.STORE, `${S3Range.labelFor(config)}: cannot allocate ${slotCount} chunks of ${config.chunkSize} bytes`);
    }
    return table;
  }

  /** HeadObject's 404 has no body: ask for the bucket to say which of the two is missing. */
  async #whichIsMissing(error: UmapError): Promise<UmapError> {
    try {
      await this.#client.send(new HeadBucketCommand({ Bucket: this.bucket }), {
        abortSignal: AbortSignal.timeout(this.#config.requestTimeoutMs),
      });
    } catch (bucketError) {
      const failure = classify(bucketError);
      if (failure.code === ErrorCode.NOT_FOUND) {
        return new UmapError(ErrorCode.NOT_FOUND, `${this.#label}: no such bucket ${JSON.stringify(this.bucket)}`, { cause: error.cause });
      }
    } finally {
      this.#client.destroy();
    }
    return new UmapError(ErrorCode.NOT_FOUND, `${this.#label}: no such object (bucket ${JSON.stringify(this.bucket)} has no key ${JSON.stringify(this.key)})`, {
      cause: error.cause,
    });
  }

  /** The config a copy of this range in another thread opens without HeadObject. */
  pinnedConfig(): S3RangeConfig {
    const { bucket, key, endpoint, region, credentials, forcePathStyle, chunkSize, concurrency } = this.#config;
    const { connectTimeoutMs, requestTimeoutMs, maxAttempts, retryTimeMs } = this.#config;
    const config: S3RangeConfig = { bucket, key, size: this.size, chunkSize, concurrency, connectTimeoutMs, requestTimeoutMs, maxAttempts, retryTimeMs };
    if (this.etag !== undefined) config.etag = this.etag;
    if (this.#table) config.sharedChunks = this.#table.address;
    if (endpoint !== undefined) config.endpoint = endpoint;
    if (region !== undefined) config.region = region;
    if (credentials !== undefined) config.credentials = credentials;
    if (forcePathStyle !== undefined) config.forcePathStyle = forcePathStyle;
    return config;
  }

  async read(byteOffset: number, target: Uint8Array): Promise<void> {
    if (this.#closed) throw new UmapError(ErrorCode.CLOSED, `${this.#label}: closed`);
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + target.length > this.size) {
      throw new UmapError(
        ErrorCode.INVALID_ARGUMENT,
        `${this.#label}: read of ${target.length} bytes at byte offset ${byteOffset} is outside the object (${this.size} bytes)`,
      );
    }
    if (target.length === 0) return;
    const firstIndex = Math.floor(byteOffset / this.chunkSize);
    const lastIndex = Math.floor((byteOffset + target.length - 1) / this.chunkSize);
    // A read in the chunk the last one ended in, or the next, continues a run: fetch ahead.
    const sequential = firstIndex === this.#lastChunkIndex || firstIndex === this.#lastChunkIndex + 1 || (firstIndex === 0 && this.#lastChunkIndex === -2);
    this.#lastChunkIndex = lastIndex;
    const reads: Promise<void>[] = [];
    for (let index = firstIndex; index <= lastIndex; index++) reads.push(this.#readFromChunk(index, byteOffset, target));
    if (sequential) this.#readAhead(lastIndex);
    const results = await Promise.allSettled(reads);
    for (const result of results) if (result.status === "rejected") throw result.reason;
  }

  /** Copies the part of target that lies in chunk `index`, from the table or a fetch of it. */
  async #readFromChunk(index: number, byteOffset: number, target: Uint8Array): Promise<void> {
    const chunkStart = index * this.chunkSize;
    const byteLength = Math.min(this.chunkSize, this.size - chunkStart);
    const from = Math.max(byteOffset, chunkStart);
    const to = Math.min(byteOffset + target.length, chunkStart + byteLength);
    const copy = (bytes: Uint8Array) => target.set(bytes.subarray(from - chunkStart, to - chunkStart), from - byteOffset);
    // Another thread fetching the chunk may fail or stall: wait for it at most this long.
    const waitUntilMs = performance.now() + this.#config.requestTimeoutMs + this.#config.retryTimeMs;
    let waited = false;
    for (;;) {
      const found = this.#table!.lookup(index, byteLength, "always", this.concurrency);
      if (found.kind === "ready") {
        if (waited) this.stats.sharedWaits++;
        else this.stats.chunkHits++;
        try {
          copy(found.bytes);
        } finally {
          this.#table!.delivered(found.slot, to - from);
        }
        return;
      }
      if (found.kind === "claimed") {
        await this.#fetchIntoSlot(found.slot, found.bytes, chunkStart, true);
        try {
          copy(found.bytes);
        } finally {
          this.#table!.delivered(found.slot, to - from);
        }
        return;
      }
      if (found.kind === "full" || performance.now() > waitUntilMs) {
        // No room in the table (every slot being fetched or read), or the fetching thread is
        // stuck: fetch just this part, privately.
        const bytes = new Uint8Array(to - from);
        await this.#withRetries(`GetObject bytes ${from}-${to - 1}`, (signal) => this.#getRange(from, bytes, signal));
        target.set(bytes, from - byteOffset);
        return;
      }
      waited = true;
      await Bun.sleep(SHARED_POLL_MS);
    }
  }

  /** Fetches a claimed slot's chunk; the slot is READY (pinned for the caller if `pin`) or freed. */
  async #fetchIntoSlot(slot: number, bytes: Uint8Array, chunkStart: number, pin: boolean): Promise<void> {
    this.#inFlight++;
    try {
      await this.#withRetries(`GetObject bytes ${chunkStart}-${chunkStart + bytes.length - 1}`, (signal) => this.#getRange(chunkStart, bytes, signal));
    } catch (error) {
      this.#table!.failed(slot);
      throw error;
    } finally {
      this.#inFlight--;
    }
    this.#table!.fetched(slot, pin);
  }

  /** Claims and starts fetches of the chunks after lastIndex while fewer than `concurrency` are in flight. */
  #readAhead(lastIndex: number): void {
    const chunkCount = Math.ceil(this.size / this.chunkSize);
    for (let index = lastIndex + 1; index < chunkCount && index <= lastIndex + this.concurrency; index++) {
      const chunkStart = index * this.chunkSize;
      const byteLength = Math.min(this.chunkSize, this.size - chunkStart);
      const found = this.#table!.lookup(index, byteLength, "if-idle", this.concurrency);
      if (found.kind === "ready") {
        this.#table!.delivered(found.slot, 0); // only looked: unpin
        continue;
      }
      if (found.kind === "fetching") continue;
      if (found.kind === "full") break;
      this.stats.readAheadChunks++;
      const fetch = this.#fetchIntoSlot(found.slot, found.bytes, chunkStart, false).catch(() => {
        // A read that needs this chunk fetches it again and reports its own error.
      });
      this.#background.add(fetch);
      void fetch.finally(() => this.#background.delete(fetch));
    }
  }

  /** Settles when the read-ahead fetches started so far have; undefined if there are none. */
  pending(): Promise<void> | undefined {
    if (this.#background.size === 0) return undefined;
    return Promise.allSettled([...this.#background]).then(() => {});
  }

  /** One ranged GET into target (one attempt). */
  async #getRange(byteOffset: number, target: Uint8Array, signal: AbortSignal): Promise<void> {
    const last = byteOffset + target.length - 1;
    const response = await this.#client.send(
      new GetObjectCommand({
        Bucket: this.bucket,
        Key: this.key,
        Range: `bytes=${byteOffset}-${last}`,
        ...(this.etag ? { IfMatch: this.etag } : {}),
      }),
      { abortSignal: signal },
    );
    // Servers that ignore If-Match still send the ETag of what they serve: check it too.
    if (this.etag && response.ETag && response.ETag !== this.etag) {
      (response.Body as { destroy?: () => void } | undefined)?.destroy?.();
      throw new UmapError(
        ErrorCode.STORE,
        `${this.#label}: the object was replaced while mapped (ETag ${this.etag} when opened, ${response.ETag} now)`,
      );
    }
    const body = response.Body as AsyncIterable<Uint8Array> | undefined;
    if (!body) throw new ShortBodyError(`${this.#label}: GetObject returned no body`);
    let done = 0;
    for await (const part of body) {
      if (done + part.length > target.length) {
        throw new UmapError(ErrorCode.STORE, `${this.#label}: GetObject of bytes ${byteOffset}-${last} returned more than ${target.length} bytes`);
      }
      target.set(part, done);
      done += part.length;
    }
    if (done !== target.length) {
      throw new ShortBodyError(`${this.#label}: GetObject of bytes ${byteOffset}-${last} ended after ${done} of ${target.length} bytes`);
    }
    this.stats.bytesFetched += done;
  }

  /**
   * Runs one request with retries: retryable failures (throttling, 5xx, resets, timeouts, short
   * bodies) back off exponentially with full jitter, up to maxAttempts and retryTimeMs; others
   * fail at once. Throws a UmapError naming the object, the request and the last reason.
   */
  async #withRetries<T>(what: string, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const startedMs = performance.now();
    for (let attemptIndex = 0; ; attemptIndex++) {
      this.stats.requests++;
      try {
        return await attempt(AbortSignal.any([AbortSignal.timeout(this.#config.requestTimeoutMs), this.#abort.signal]));
      } catch (error) {
        const failure = classify(error);
        const elapsedMs = performance.now() - startedMs;
        const delayMs = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attemptIndex);
        const attempts = attemptIndex + 1;
        if (!failure.retryable || attempts >= this.#config.maxAttempts || elapsedMs + delayMs > this.#config.retryTimeMs || this.#closed) {
          if (error instanceof UmapError) throw error;
          const tries = attempts > 1 ? ` after ${attempts} attempts in ${Math.round(elapsedMs)} ms` : "";
          throw new UmapError(failure.code, `${this.#label}: ${what} failed${tries}: ${failure.reason}`, { cause: error });
        }
        this.stats.retries++;
        await Bun.sleep(delayMs);
      }
    }
  }

  /** Stops fetching (requests in flight are aborted), then lets go of the chunk table. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    // A fetch still running would write into the table: wait for each to stop first.
    await Promise.allSettled([...this.#background]);
    this.#table?.detach();
    this.#client.destroy();
  }
}

export function clientConfig(config: ResolvedS3Config): S3ClientConfig {
  const client: S3ClientConfig = {
    // Retries are ours (bounded in time as well as count, and counted): the SDK makes one attempt.
    maxAttempts: 1,
    requestHandler: { connectionTimeout: config.connectTimeoutMs, requestTimeout: config.requestTimeoutMs },
  };
  if (config.endpoint !== undefined) {
    client.endpoint = config.endpoint;
    client.forcePathStyle = config.forcePathStyle ?? true;
    client.region = config.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1";
  } else {
    if (config.region !== undefined) client.region = config.region;
    if (config.forcePathStyle !== undefined) client.forcePathStyle = config.forcePathStyle;
  }
  if (config.credentials !== undefined) client.credentials = { ...config.credentials };
  return client;
}
