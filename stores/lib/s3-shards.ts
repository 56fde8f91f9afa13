/**
 * Shards as S3 objects: a ShardBackend (see shard-files.ts) for sharded datastores on S3, and
 * the lease that keeps a second writer out.
 *
 * Write path. An object can only be written whole, and every evictor worker has its own store
 * instance, so a page write-back is a read-modify-write of its shard object made safe by a
 * conditional PUT: the shard is read (GET, giving its ETag; a shard never written is zeros and
 * has no ETag), the page patched in, and the shard PUT with If-Match on that ETag (If-None-Match:
 * * for a new shard). If another evictor wrote the shard in between, the PUT fails with 412 and
 * the write starts again from the shard as it is now (at most WRITE_ATTEMPTS_MAX times). Each
 * instance keeps the shards it last wrote (and their ETags), so a run of write-backs to one shard
 * from one evictor costs one PUT each and no GET; a stale copy only costs a 412 and a GET, never a
 * lost write. Cost: every write-back uploads its whole shard, so keep shards small compared with
 * what is written at once (a few MiB), or pages large. write() resolves once the PUT has, so a
 * page filled again afterwards (by any worker) reads the new bytes: S3 reads after a PUT are
 * strongly consistent.
 *
 * Lease. Opening for writing creates `<prefix>/lease.json` with If-None-Match: *. If it exists
 * and has not expired, the open is refused; an expired lease (a crashed writer's) is taken over
 * with If-Match on its ETag, so two takers cannot both win. The owner renews it every third of
 * its time and deletes it at close(). A server that ignores conditional writes (s3rver does) is
 * detected at open and writing is refused there: without them neither guarantee holds.
 */
import { hostname } from "node:os";
import { ErrorCode, UmapError } from "../../src/errors.ts";
import { S3Objects } from "./s3-objects.ts";
import type { ShardBackend } from "./shard-files.ts";

/** Read-modify-write attempts of one write-back before it fails (each lost to another evictor). */
const WRITE_ATTEMPTS_MAX = 32;
/** Pause between attempts: random below this, times the attempt number. */
const CONFLICT_BACKOFF_MS = 5;
/** Shards each instance keeps for its next write (bounded in count and in bytes). */
const CACHED_SHARDS_MAX = 8;
const CACHED_BYTES_MAX = 64 * 1024 * 1024;
/** Largest lease object read: a real one is about 200 bytes. */
const LEASE_BYTES_MAX = 64 * 1024;
export const LEASE_FORMAT = "bun-umap-lease";
export const LEASE_NAME = "lease.json";

export interface S3ShardObjectsOptions {
  label: string;
  objects: S3Objects;
  keyOf(shardIndex: number): string;
  byteLengthOf(shardIndex: number): number;
  writable: boolean;
}

export class S3ShardObjects implements ShardBackend {
  readonly #options: S3ShardObjectsOptions;
  /** shard index -> its bytes and ETag as this instance last wrote or read them, oldest first. */
  readonly #cache = new Map<number, { bytes: Uint8Array; etag: string }>();
  #cachedBytes = 0;

  constructor(options: S3ShardObjectsOptions) {
    this.#options = options;
  }

  get stats() {
    return this.#options.objects.stats;
  }

  get objects(): S3Objects {
    return this.#options.objects;
  }

  async readShard(shardIndex: number, extentOffset: number, target: Uint8Array): Promise<boolean> {
    const { objects, keyOf } = this.#options;
    const got = await objects.get(keyOf(shardIndex), { byteOffset: extentOffset, byteLength: target.length });
    if (!got) return false;
    this.#checkSize(shardIndex, got.objectSize);
    target.set(got.bytes);
    return true;
  }

  async writeShard(shardIndex: number, extentOffset: number, source: Uint8Array): Promise<void> {
    const { objects, keyOf, byteLengthOf, label } = this.#options;
    const key = keyOf(shardIndex);
    for (let attempt = 1; attempt <= WRITE_ATTEMPTS_MAX; attempt++) {
      let base = this.#cache.get(shardIndex);
      if (base) this.#uncache(shardIndex);
      let etag = base?.etag;
      let bytes = base?.bytes;
      if (!bytes) {
        const got = await objects.get(key);
        if (got) {
          this.#checkSize(shardIndex, got.objectSize);
          bytes = got.bytes;
          etag = got.etag;
          if (etag === undefined) throw new UmapError(ErrorCode.STORE, `${label}: ${objects.labelOf(key)} has no ETag: cannot write it safely`);
        } else {
          // Never written: zeros, and writing zeros to it changes nothing (no object is made).
          if (isAllZero(source)) return;
          bytes = new Uint8Array(byteLengthOf(shardIndex));
          etag = undefined;
        }
      }
      bytes.set(source, extentOffset);
      const result = await objects.put(key, bytes, etag === undefined ? "absent" : { etag });
      if (result !== "conflict") {
        this.#remember(shardIndex, bytes, result);
        return;
      }
      // Another evictor (or writer) changed the shard since this copy: start again from its bytes.
      await Bun.sleep(Math.random() * CONFLICT_BACKOFF_MS * attempt);
    }
    throw new UmapError(
      ErrorCode.STORE,
      `${label}: writing ${objects.labelOf(key)} at byte ${extentOffset} lost ${WRITE_ATTEMPTS_MAX} times in a row to other writers of the shard`,
    );
  }

  /** Every write is durable when it resolves (its PUT has): nothing to do. */
  flush(): void {}

  close(): void {
    this.#cache.clear();
    this.#cachedBytes = 0;
    this.#options.objects.close();
  }

  #checkSize(shardIndex: number, objectSize: number): void {
    const expected = this.#options.byteLengthOf(shardIndex);
    if (objectSize !== expected) {
      throw new UmapError(
        ErrorCode.CORRUPT,
        `${this.#options.label}: ${this.#options.objects.labelOf(this.#options.keyOf(shardIndex))} is ${objectSize} bytes, the manifest says ${expected}`,
      );
    }
  }

  #remember(shardIndex: number, bytes: Uint8Array, etag: string): void {
    if (bytes.length > CACHED_BYTES_MAX) return;
    this.#cache.set(shardIndex, { bytes, etag });
    this.#cachedBytes += bytes.length;
    for (const [index, entry] of this.#cache) {
      if (this.#cache.size <= CACHED_SHARDS_MAX && this.#cachedBytes <= CACHED_BYTES_MAX) break;
      this.#cache.delete(index);
      this.#cachedBytes -= entry.bytes.length;
    }
  }

  #uncache(shardIndex: number): void {
    const entry = this.#cache.get(shardIndex);
    if (!entry) return;
    this.#cache.delete(shardIndex);
    this.#cachedBytes -= entry.bytes.length;
  }
}

/** What a lease object holds. */
interface LeaseBody {
  format: typeof LEASE_FORMAT;
  owner: string;
  host: string;
  pid: number;
  acquiredAtMs: number;
  expiresAtMs: number;
}

/** A writer's hold on a datastore: created at open, renewed while open, deleted at close. */
export class S3Lease {
  readonly key: string;
  readonly owner: string;
  readonly #objects: S3Objects;
  readonly #leaseTimeMs: number;
  readonly #label: string;
  #etag: string;
  #timer: ReturnType<typeof setInterval> | undefined;
  #renewing: Promise<void> | undefined;
  /** Why the lease was lost (another writer took it over), once it has been. */
  lostReason: string | undefined;

  private constructor(objects: S3Objects, key: string, owner: string, etag: string, leaseTimeMs: number, label: string) {
    this.#objects = objects;
    this.key = key;
    this.owner = owner;
    this.#etag = etag;
    this.#leaseTimeMs = leaseTimeMs;
    this.#label = label;
  }

  /**
   * Takes the lease at `key`, or refuses with ERR_UMAP_STORE naming the writer that holds it.
   * Refuses with ERR_UMAP_UNSUPPORTED a server that does not honour If-None-Match and If-Match.
   */
  static async acquire(objects: S3Objects, key: string, leaseTimeMs: number, label: string): Promise<S3Lease> {
    const owner = crypto.randomUUID();
    const body = (): Uint8Array => leaseBytes(owner, leaseTimeMs);
    let etag = await objects.put(key, body(), "absent");
    if (etag === "conflict") {
      const held = await objects.get(key, undefined, LEASE_BYTES_MAX);
      if (!held) {
        // Released between the two requests: one more try, then treat it as held.
        etag = await objects.put(key, body(), "absent");
        if (etag === "conflict") throw heldError(label, objects.labelOf(key), undefined);
      } else {
        const current = parseLease(held.bytes);
        if (current && current.expiresAtMs > Date.now()) throw heldError(label, objects.labelOf(key), current);
        // Expired (or unreadable, which no live writer leaves): take it over, unless another did first.
        etag = held.etag === undefined ? "conflict" : await objects.put(key, body(), { etag: held.etag });
        if (etag === "conflict") throw heldError(label, objects.labelOf(key), undefined);
      }
    }
    const lease = new S3Lease(objects, key, owner, etag, leaseTimeMs, label);
    await lease.#checkConditionalWrites();
    lease.#timer = setInterval(() => void lease.renew().catch(() => {}), Math.max(1, Math.floor(leaseTimeMs / 3)));
    lease.#timer.unref?.();
    return lease;
  }

  /**
   * Both conditions must fail where they should: a second create of the lease, and a write with a
   * wrong ETag. A server that lets either through cannot keep writers apart.
   */
  async #checkConditionalWrites(): Promise<void> {
    const again = await this.#objects.put(this.key, leaseBytes(this.owner, this.#leaseTimeMs), "absent");
    const wrong = again === "conflict" ? await this.#objects.put(this.key, leaseBytes(this.owner, this.#leaseTimeMs), { etag: '"00000000000000000000000000000000"' }) : again;
    if (again === "conflict" && wrong === "conflict") return;
    this.#etag = wrong === "conflict" ? this.#etag : wrong;
    await this.release();
    const endpoint = this.#objects.config.endpoint ? `the S3 service at ${this.#objects.config.endpoint}` : "this S3 service";
    throw new UmapError(
      ErrorCode.UNSUPPORTED,
      `${this.#label}: ${endpoint} ignores conditional writes (${again === "conflict" ? "If-Match" : "If-None-Match"}), so a second writer could not be ` +
        "refused and write-backs of two evictors to one shard could lose data: open the datastore read-only there",
    );
  }

  /** Extends the lease; a lease another writer took over is lost for good (lostReason says so). */
  renew(): Promise<void> {
    if (this.lostReason !== undefined) return Promise.resolve();
    this.#renewing ??= (async () => {
      try {
        const etag = await this.#objects.put(this.key, leaseBytes(this.owner, this.#leaseTimeMs), { etag: this.#etag });
        if (etag === "conflict") {
          this.lostReason = `${this.#objects.labelOf(this.key)} was taken over by another writer (it expired: was this process paused for over ${this.#leaseTimeMs} ms?)`;
          this.#stop();
        } else {
          this.#etag = etag;
        }
      } finally {
        this.#renewing = undefined;
      }
    })();
    return this.#renewing;
  }

  /** Throws ERR_UMAP_STORE if the lease was lost. */
  check(what: string): void {
    if (this.lostReason !== undefined) throw new UmapError(ErrorCode.STORE, `${this.#label}: cannot ${what}: ${this.lostReason}`);
  }

  /** Deletes the lease (only if it is still ours, where the server checks If-Match). */
  async release(): Promise<void> {
    this.#stop();
    await this.#renewing?.catch(() => {});
    try {
      if (this.lostReason === undefined) await this.#objects.delete(this.key, this.#etag);
    } finally {
      this.#objects.close();
    }
  }

  #stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

function leaseBytes(owner: string, leaseTimeMs: number): Uint8Array {
  const nowMs = Date.now();
  const body: LeaseBody = { format: LEASE_FORMAT, owner, host: hostname(), pid: process.pid, acquiredAtMs: nowMs, expiresAtMs: nowMs + leaseTimeMs };
  return new TextEncoder().encode(`${JSON.stringify(body)}\n`);
}

function parseLease(bytes: Uint8Array): LeaseBody | undefined {
  try {
    const value = JSON.parse(new TextDecoder().decode(bytes)) as Partial<LeaseBody>;
    if (value?.format !== LEASE_FORMAT || !Number.isFinite(value.expiresAtMs)) return undefined;
    return value as LeaseBody;
  } catch {
    return undefined;
  }
}

function heldError(label: string, leaseLabel: string, lease: LeaseBody | undefined): UmapError {
  const who = lease ? ` by process ${lease.pid} on ${JSON.stringify(lease.host)} until ${new Date(lease.expiresAtMs).toISOString()}` : "";
  return new UmapError(
    ErrorCode.STORE,
    `${label}: another writer has the datastore open (its lease ${leaseLabel} is held${who}); ` +
      "a datastore has one writer at a time: close the other, or wait for its lease to expire",
  );
}

function isAllZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

