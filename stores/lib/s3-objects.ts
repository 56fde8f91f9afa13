/**
 * Whole S3 objects under one prefix: what a sharded datastore on S3 is made of (its manifest,
 * its shard objects, its writer's lease). Requests are retried as S3Range retries them
 * (throttling, 5xx, resets, timeouts: capped exponential backoff with full jitter, bounded in
 * attempts and in total time); every other answer is returned to the caller as it came, so that
 * 404 ("never written") and 412 ("someone else wrote it first") can be told apart from failures.
 *
 * Credentials never appear in messages: labels name the bucket, the key and the endpoint host.
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { ErrorCode, UmapError } from "../../src/errors.ts";
import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, classify, clientConfig, redactUrl, type ResolvedS3Config } from "./s3-range.ts";

/** Keys one listing may return before it is refused: a datastore has at most 10^8 shards. */
const LIST_PAGE_KEYS = 1000;

/** An answer's HTTP status, or undefined for errors that never reached a server. */
export function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/** True for S3's "no such key" answers (GET and HEAD spell it differently). */
export function isNoSuchKey(error: unknown): boolean {
  const name = (error as { name?: string } | undefined)?.name;
  return name === "NoSuchKey" || name === "NotFound" || (statusOf(error) === 404 && name !== "NoSuchBucket");
}

/** True for a failed precondition (If-Match / If-None-Match): another writer got there first. */
export function isPreconditionFailed(error: unknown): boolean {
  const name = (error as { name?: string } | undefined)?.name;
  return name === "PreconditionFailed" || statusOf(error) === 412 || name === "ConditionalRequestConflict" || statusOf(error) === 409;
}

export interface ObjectBytes {
  bytes: Uint8Array;
  etag: string | undefined;
  /** The whole object's size (a ranged GET's Content-Range total). */
  objectSize: number;
}

export class S3Objects {
  readonly bucket: string;
  readonly config: ResolvedS3Config;
  readonly client: S3Client;
  /** Requests sent and retried by this instance (tests count them). */
  readonly stats = { requests: 0, retries: 0, puts: 0, gets: 0, conflicts: 0 };
  #closed = false;
  readonly #abort = new AbortController();

  constructor(config: ResolvedS3Config) {
    this.bucket = config.bucket;
    this.config = config;
    this.client = new S3Client(clientConfig(config));
  }

  /** "s3://bucket/key at http://127.0.0.1:9000/" (never with credentials). */
  labelOf(key: string): string {
    return `s3://${this.bucket}/${key}${this.config.endpoint ? ` at ${redactUrl(this.config.endpoint)}` : ""}`;
  }

  /**
   * Runs one request with retries of the retryable failures. A failure that is not retryable is
   * thrown as the SDK gave it (callers look at 404 and 412); retries that run out throw a
   * UmapError naming `what`.
   */
  async send<T>(what: string, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.#closed) throw new UmapError(ErrorCode.CLOSED, `${what}: the store is closed`);
    const startedMs = performance.now();
    for (let attemptIndex = 0; ; attemptIndex++) {
      this.stats.requests++;
      try {
        return await attempt(AbortSignal.any([AbortSignal.timeout(this.config.requestTimeoutMs), this.#abort.signal]));
      } catch (error) {
        const failure = classify(error);
        if (!failure.retryable) throw error;
        const elapsedMs = performance.now() - startedMs;
        const delayMs = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attemptIndex);
        const attempts = attemptIndex + 1;
        if (attempts >= this.config.maxAttempts || elapsedMs + delayMs > this.config.retryTimeMs || this.#closed) {
          throw new UmapError(failure.code, `${what} failed after ${attempts} attempts in ${Math.round(elapsedMs)} ms: ${failure.reason}`, { cause: error });
        }
        this.stats.retries++;
        await Bun.sleep(delayMs);
      }
    }
  }

  /**
   * The object's bytes (all of them, or `byteLength` from `byteOffset`), or undefined if there is
   * no such key. `maxBytes` bounds a whole-object read (a manifest is small).
   */
  async get(key: string, range?: { byteOffset: number; byteLength: number }, maxBytes = Number.MAX_SAFE_INTEGER): Promise<ObjectBytes | undefined> {
    const label = this.labelOf(key);
    this.stats.gets++;
    try {
      return await this.send(`GetObject ${label}`, async (signal) => {
        const response = await this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: key,
            ...(range ? { Range: `bytes=${range.byteOffset}-${range.byteOffset + range.byteLength - 1}` } : {}),
          }),
          { abortSignal: signal },
        );
        const total = range ? rangeTotal(response.ContentRange) : response.ContentLength;
        const expected = range ? range.byteLength : total;
        if (expected === undefined || total === undefined) throw new UmapError(ErrorCode.STORE, `${label}: GetObject gave no size`);
        if (!range && expected > maxBytes) {
          (response.Body as { destroy?: () => void } | undefined)?.destroy?.();
          return { bytes: new Uint8Array(0), etag: response.ETag, objectSize: total };
        }
        const bytes = new Uint8Array(expected);
        let done = 0;
        for await (const part of (response.Body ?? []) as AsyncIterable<Uint8Array>) {
          if (done + part.length > bytes.length) throw new UmapError(ErrorCode.STORE, `${label}: GetObject returned more than ${bytes.length} bytes`);
          bytes.set(part, done);
          done += part.length;
        }
        // A short body is a broken connection: an ECONNRESET-like error, so it is retried.
        if (done !== bytes.length) throw Object.assign(new Error(`${label}: body ended after ${done} of ${bytes.length} bytes`), { code: "ECONNRESET" });
        return { bytes, etag: response.ETag, objectSize: total };
      });
    } catch (error) {
      if (isNoSuchKey(error)) return undefined;
      throw this.failure(`GetObject ${label}`, error);
    }
  }

  /**
   * Puts the whole object. `condition`: "absent" (If-None-Match: *, fails if the key exists),
   * an ETag (If-Match, fails if the object changed), or undefined (unconditional). Returns the new
   * ETag, or "conflict" when the condition failed.
   */
  async put(key: string, bytes: Uint8Array, condition?: "absent" | { etag: string }): Promise<string | "conflict"> {
    const label = this.labelOf(key);
    this.stats.puts++;
    try {
      const response = await this.send(`PutObject ${label}`, (signal) =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: bytes,
            ContentLength: bytes.length,
            ...(condition === "absent" ? { IfNoneMatch: "*" } : condition ? { IfMatch: condition.etag } : {}),
          }),
          { abortSignal: signal },
        ),
      );
      if (response.ETag === undefined) throw new UmapError(ErrorCode.STORE, `${label}: PutObject gave no ETag`);
      return response.ETag;
    } catch (error) {
      if (condition !== undefined && (isPreconditionFailed(error) || (typeof condition === "object" && isNoSuchKey(error)))) {
        this.stats.conflicts++;
        return "conflict";
      }
      throw this.failure(`PutObject ${label}`, error);
    }
  }

  /**
   * Uploads a local file as the object (unconditionally: a PUT replaces an object whole). The
   * file is read into memory first: a streamed body makes the SDK send aws-chunked framing,
   * which some S3-compatible servers (s3rver) store as part of the object.
   */
  async putFile(key: string, path: string): Promise<string> {
    const bytes = new Uint8Array(await Bun.file(path).arrayBuffer());
    const etag = await this.put(key, bytes);
    if (etag === "conflict") throw new UmapError(ErrorCode.INTERNAL, `${this.labelOf(key)}: an unconditional PUT reported a conflict`);
    return etag;
  }

  /** Deletes the object (only if its ETag is still `etag`, where the server checks that). */
  async delete(key: string, etag?: string): Promise<void> {
    const label = this.labelOf(key);
    try {
      await this.send(`DeleteObject ${label}`, (signal) =>
        this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, ...(etag ? { IfMatch: etag } : {}) }), { abortSignal: signal }),
      );
    } catch (error) {
      if (isNoSuchKey(error) || isPreconditionFailed(error)) return;
      throw this.failure(`DeleteObject ${label}`, error);
    }
  }

  /**
   * Every key (with its size) under `prefix`, at most `keysMax` of them (more is ERR_UMAP_CORRUPT);
   * with `firstPageOnly`, just the first page of the listing (up to 1000 keys).
   */
  async list(prefix: string, keysMax: number, firstPageOnly = false): Promise<{ key: string; byteLength: number }[]> {
    const found: { key: string; byteLength: number }[] = [];
    let token: string | undefined;
    const pageLimit = Math.ceil(keysMax / LIST_PAGE_KEYS) + 1;
    for (let pageIndex = 0; pageIndex < pageLimit; pageIndex++) {
      let response;
      try {
        response = await this.send(`ListObjectsV2 ${this.labelOf(prefix)}`, (signal) =>
          this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token, MaxKeys: LIST_PAGE_KEYS }), {
            abortSignal: signal,
          }),
        );
      } catch (error) {
        throw this.failure(`ListObjectsV2 ${this.labelOf(prefix)}`, error);
      }
      for (const item of response.Contents ?? []) {
        if (item.Key !== undefined) found.push({ key: item.Key, byteLength: item.Size ?? 0 });
      }
      if (firstPageOnly) return found;
      if (found.length > keysMax) {
        throw new UmapError(ErrorCode.CORRUPT, `${this.labelOf(prefix)}: more than ${keysMax} objects under the prefix`);
      }
      if (!response.IsTruncated || !response.NextContinuationToken) return found;
      token = response.NextContinuationToken;
    }
    throw new UmapError(ErrorCode.CORRUPT, `${this.labelOf(prefix)}: the listing did not end within ${pageLimit} pages`);
  }

  /** A UmapError for a failed request: a missing bucket is NOT_FOUND, the rest as S3Range sorts them. */
  failure(what: string, error: unknown): UmapError {
    if (error instanceof UmapError) return error;
    const name = (error as { name?: string } | undefined)?.name;
    if (name === "NoSuchBucket") {
      return new UmapError(ErrorCode.NOT_FOUND, `${what}: no such bucket ${JSON.stringify(this.bucket)}`, { cause: error });
    }
    const failure = classify(error);
    return new UmapError(failure.code, `${what} failed: ${failure.reason}`, { cause: error });
  }

  /** NOT_FOUND if the bucket does not exist (HeadBucket); other failures as usual. */
  async checkBucket(): Promise<void> {
    const what = `HeadBucket s3://${this.bucket}${this.config.endpoint ? ` at ${redactUrl(this.config.endpoint)}` : ""}`;
    try {
      await this.send(what, (signal) => this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: signal }));
    } catch (error) {
      if (statusOf(error) === 404 || (error as { name?: string }).name === "NotFound" || (error as { name?: string }).name === "NoSuchBucket") {
        throw new UmapError(ErrorCode.NOT_FOUND, `${what}: no such bucket ${JSON.stringify(this.bucket)}`, { cause: error });
      }
      throw this.failure(what, error);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    this.client.destroy();
  }
}

/** The total of "bytes 0-99/1234", or undefined. */
function rangeTotal(contentRange: string | undefined): number | undefined {
  const match = /\/(\d+)\s*$/.exec(contentRange ?? "");
  return match ? Number(match[1]) : undefined;
}
