/**
 * S3Store: one S3 object (or one of any S3-compatible store) as a read-only store.
 *
 *   await using region = await umap(new S3Store({ bucket: "data", key: "big.f64" }));
 *
 * `new S3Store(options)` only checks its options: the object's size and ETag are learnt by
 * HeadObject when umap() opens it. So an S3Store is a store descriptor (its `module` and
 * `options` are what each fill worker builds its own instance from) as well as a store instance
 * that can be opened and read directly. The instance umap() opens pins the object's size and
 * ETag into the descriptor the workers get, so they skip HeadObject and every fill asks for
 * exactly the version that was opened. The fetching itself (chunks, read-ahead, retries) is
 * stores/lib/s3-range.ts.
 */
import { ErrorCode, UmapError, describeValue, invalidArgument } from "../src/errors.ts";
import type { StoreDescriptor, StoreInstance } from "../src/store.ts";
import { resolveS3Config, S3Range, type S3Options, type S3RangeConfig, type S3RangeStats } from "./lib/s3-range.ts";

export type { S3Options, S3Credentials } from "./lib/s3-range.ts";

/** `new S3Store({ bucket, key, ...S3Options })`. */
export interface S3StoreOptions extends S3Options {
  bucket: string;
  key: string;
}

/**
 * What opened instances learnt, by the options object they were built from: umap() builds its
 * instance from the descriptor's own `options` object, so the descriptor finds the pinned size
 * and ETag here when umap() serializes it for the workers (see toJSON).
 */
const pinnedByOptions = new WeakMap<object, S3RangeConfig>();

export default class S3Store implements StoreDescriptor, StoreInstance {
  /** This module: descriptors that name it build an S3Store. */
  static readonly MODULE = import.meta.url;
  /** Part of the descriptor: the module workers load. */
  readonly module: string = S3Store.MODULE;
  /** Part of the descriptor: the checked options (bucket, key, S3Options). */
  readonly options: S3RangeConfig;
  readonly writable = false;
  #range: S3Range | undefined;
  #opening: Promise<void> | undefined;

  constructor(options: S3StoreOptions) {
    if (typeof options !== "object" || options === null) {
      invalidArgument(`S3Store: options must be an object with bucket and key, got ${describeValue(options)}`);
    }
    // Checked now, so a bad option is an error here rather than in umap().
    resolveS3Config(options, `S3Store ${S3Range.labelFor(options)}`);
    // A frozen copy, which the caller cannot change later. Frozen options are already such a
    // copy (umap() builds its instance from this descriptor's own `options`): keep that very
    // object, as pinnedByOptions is keyed by it.
    this.options = Object.isFrozen(options) ? options : Object.freeze({ ...options });
  }

  get label(): string {
    return `S3Store ${S3Range.labelFor(this.options)}`;
  }

  /** Bytes; known once opened (umap() opens it). */
  get size(): number {
    if (this.#range) return this.#range.size;
    const size = pinnedByOptions.get(this.options)?.size ?? this.options.size;
    if (size !== undefined) return size;
    throw new UmapError(ErrorCode.INVALID_ARGUMENT, `${this.label}: size is known once the store is opened (await store.open(), or pass it to umap())`);
  }

  /** Counters of this instance's fetches (each worker thread has its own instance). */
  get stats(): S3RangeStats | undefined {
    return this.#range?.stats;
  }

  /** Learns the object's size and ETag (HeadObject), unless the options carry them. Idempotent. */
  open(): Promise<void> {
    this.#opening ??= (async () => {
      this.#range = await S3Range.open(this.options, "S3Store");
      pinnedByOptions.set(this.options, this.#range.pinnedConfig());
    })();
    return this.#opening;
  }

  async read(byteOffset: number, target: Uint8Array): Promise<void> {
    if (!this.#range) await this.open();
    await this.#range!.read(byteOffset, target);
  }

  async close(): Promise<void> {
    await this.#range?.close();
  }

  /** Settles when this instance's read-ahead fetches have; undefined if it has none in flight. */
  pending(): Promise<void> | undefined {
    return this.#range?.pending();
  }

  /** The descriptor as workers get it: with the size and ETag pinned where they are known. */
  toJSON(): StoreDescriptor {
    const options = this.#range?.pinnedConfig() ?? pinnedByOptions.get(this.options) ?? { ...this.options };
    return { module: this.module, options };
  }
}

export { S3Store };
