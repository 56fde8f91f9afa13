/**
 * ShardedStore: one address space over many files, in two layouts.
 *
 * - A datastore (create/open): a directory of equal-sized shard files and a manifest. A shard is
 *   created by the first write that reaches it, so ranges never written read as zeros and take
 *   no disk space. After LLNL UMap's SparseStore.
 * - A concatenation (concat): existing files of any sizes, one after another with no gaps,
 *   read-only. After umap-apps' FITS store.
 *
 * This file is the layout: which shard holds which bytes, the manifest, the checks. Every byte
 * of a shard is read and written through a ShardBackend (stores/lib/shard-files.ts), so the same
 * layout can sit on another backend.
 *
 * Every worker builds its own instance from describe(), with its own bounded set of open
 * descriptors, so shards are read and written in parallel across the workers.
 */
import { closeSync, fstatSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, statSync, unlinkSync, constants as fs } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { threadId } from "node:worker_threads";
import { ErrorCode, UmapError, describeError, describeValue, invalidArgument } from "../src/errors.ts";
import type { Store, StoreDescriptor } from "../src/store.ts";
import { extentsFromLengths, fixedPieces, variablePieces, type Extent, type Piece } from "./lib/extents.ts";
import { LocalShardFiles, fsyncDirectory, storeError, writeFully, type ShardBackend } from "./lib/shard-files.ts";
import { S3Objects } from "./lib/s3-objects.ts";
import { isS3Location, parseS3Location } from "./lib/s3-location.ts";
import { resolveS3Config, type S3Options } from "./lib/s3-range.ts";
import { LEASE_NAME, S3Lease, S3ShardObjects } from "./lib/s3-shards.ts";

export const MANIFEST_NAME = "manifest.json";
export const MANIFEST_FORMAT = "bun-umap-sharded";
export const MANIFEST_VERSION = 1;
/** Shard i's file name: "{index}" replaced by i, zero-padded to INDEX_DIGITS digits. */
export const DEFAULT_SHARD_NAME = "shard-{index}.bin";
const INDEX_DIGITS = 8;
/** Shards (or concatenated files) one store may have: what INDEX_DIGITS digits can number. */
export const MAX_SHARDS = 10 ** INDEX_DIGITS;
/** Longest shard file name: most file systems allow 255 bytes. */
const MAX_SHARD_NAME_BYTES = 255;
/** Largest manifest read: a real one is about 150 bytes (unknown fields are allowed, within reason). */
const MANIFEST_BYTES_MAX = 1024 * 1024;
/** Descriptors each instance (one per worker) keeps open by default. */
export const DEFAULT_MAX_OPEN_FILES = 32;
/** The most maxOpenFiles may be: each of up to 129 instances (64 fillers, 64 evictors, main) holds that many. */
const MAX_MAX_OPEN_FILES = 4096;

/** What the manifest holds (see the README's "Sharded datastore format"). */
export interface ShardedManifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  /** Bytes in the datastore. */
  size: number;
  /** Bytes per shard; the last shard holds the rest. */
  shardSize: number;
  /** File name of shard i: "{index}" replaced by i, zero-padded to 8 digits. */
  shardName: string;
}

/** Options of ShardedStore.create. */
export interface ShardedCreateOptions {
  /** Bytes in the datastore. */
  size: number;
  /** Bytes per shard file; the last shard holds the rest. */
  shardSize: number;
  /** How to reach S3, for s3://bucket/prefix locations. */
  s3?: S3Options;
  /** S3: how long the writer's lease lasts unless renewed (ms, 1000 to 86400000). Default 300000. */
  leaseTimeMs?: number;
  /** Descriptors each instance (one per worker) keeps open at most. Default 32. */
  maxOpenFiles?: number;
}

/** Options of ShardedStore.open. */
export interface ShardedOpenOptions {
  /** Open for writing. Default false. */
  writable?: boolean;
  /** How to reach S3, for s3://bucket/prefix locations. */
  s3?: S3Options;
  /** S3, writable: how long the writer's lease lasts unless renewed (ms). Default 300000. */
  leaseTimeMs?: number;
  /** Descriptors each instance (one per worker) keeps open at most. Default 32. */
  maxOpenFiles?: number;
}

/** Options of ShardedStore.concat. */
export interface ShardedConcatOptions {
  /** Descriptors each instance (one per worker) keeps open at most. Default 32. */
  maxOpenFiles?: number;
}

/** How an instance is built: what describe() hands the workers (it must survive JSON). */
type Layout =
  | {
      kind: "datastore";
      directory: string;
      size: number;
      shardSize: number;
      shardName: string;
      writable: boolean;
      maxOpenFiles: number;
    }
  | { kind: "concat"; files: { path: string; byteLength: number }[]; maxOpenFiles: number }
  | {
      kind: "s3";
      bucket: string;
      /** Keys are `${prefix}/name`, or `name` for an empty prefix. */
      prefix: string;
      s3: S3Options;
      size: number;
      shardSize: number;
      shardName: string;
      writable: boolean;
    };

export default class ShardedStore implements Store {
  /** This module: descriptors that name it build a ShardedStore. */
  static readonly MODULE = import.meta.url;

  /**
   * A new datastore at location: a directory that does not exist yet (it is made) or is empty.
   * Writable. Only the manifest is written; shards appear as writes reach them.
   */
  static async create(location: string, options: ShardedCreateOptions): Promise<ShardedStore> {
    if (typeof location === "string" && isS3Location(location)) return createOnS3(location, options);
    const directory = localDirectory("create", location, options);
    if (typeof options !== "object" || options === null) {
      invalidArgument(`ShardedStore.create ${directory}: options { size, shardSize } are required`);
    }
    const { size, shardSize } = options;
    if (!Number.isSafeInteger(size) || size <= 0) {
      invalidArgument(`ShardedStore.create ${directory}: option size must be a whole number of bytes > 0, got ${describeValue(size)}`);
    }
    if (!Number.isSafeInteger(shardSize) || shardSize <= 0) {
      invalidArgument(`ShardedStore.create ${directory}: option shardSize must be a whole number of bytes > 0, got ${describeValue(shardSize)}`);
    }
    if (Math.ceil(size / shardSize) > MAX_SHARDS) {
      invalidArgument(`ShardedStore.create ${directory}: ${size} bytes in shards of ${shardSize} makes more than ${MAX_SHARDS} shards`);
    }
    const maxOpenFiles = checkedMaxOpenFiles(`ShardedStore.create ${directory}`, options.maxOpenFiles);
    try {
      mkdirSync(directory, { recursive: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST" || (error as NodeJS.ErrnoException).code === "ENOTDIR") {
        invalidArgument(`ShardedStore.create ${directory}: exists and is not a directory`);
      }
      throw storeError(`ShardedStore.create ${directory}: cannot make the directory`, error);
    }
    const entries = listDirectory(directory);
    if (entries.includes(MANIFEST_NAME)) {
      invalidArgument(`ShardedStore.create ${directory}: a datastore already exists there (${join(directory, MANIFEST_NAME)}); open it instead`);
    }
    if (entries.length > 0) {
      invalidArgument(`ShardedStore.create ${directory}: the directory is not empty (${entries.length} entries, such as ${JSON.stringify(entries[0])}); a datastore needs a directory of its own`);
    }
    const manifest: ShardedManifest = { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, size, shardSize, shardName: DEFAULT_SHARD_NAME };
    // No replace: if another create() won the race since the listing, this one fails.
    const created = writeNewFileAtomically(directory, MANIFEST_NAME, new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`));
    if (!created) {
      invalidArgument(`ShardedStore.create ${directory}: a datastore already exists there (${join(directory, MANIFEST_NAME)}); open it instead`);
    }
    return new ShardedStore({ kind: "datastore", directory, size, shardSize, shardName: DEFAULT_SHARD_NAME, writable: true, maxOpenFiles });
  }

  /** An existing datastore, read-only unless `writable`; its manifest and its shards' sizes are checked. */
  static async open(location: string, options: ShardedOpenOptions = {}): Promise<ShardedStore> {
    if (typeof location === "string" && isS3Location(location)) return openOnS3(location, options);
    const directory = localDirectory("open", location, options);
    if (typeof options !== "object" || options === null) invalidArgument(`ShardedStore.open ${directory}: options must be an object`);
    if (options.writable !== undefined && typeof options.writable !== "boolean") {
      invalidArgument(`ShardedStore.open ${directory}: option writable must be a boolean, got ${describeValue(options.writable)}`);
    }
    const maxOpenFiles = checkedMaxOpenFiles(`ShardedStore.open ${directory}`, options.maxOpenFiles);
    const manifest = readManifest(directory);
    checkShards(directory, manifest);
    const { size, shardSize, shardName } = manifest;
    return new ShardedStore({ kind: "datastore", directory, size, shardSize, shardName, writable: options.writable === true, maxOpenFiles });
  }

  /** Existing files of any sizes, one after another with no gaps: read-only. */
  static async concat(paths: string[], options: ShardedConcatOptions = {}): Promise<ShardedStore> {
    if (!Array.isArray(paths) || paths.length === 0) {
      invalidArgument(`ShardedStore.concat: paths must be a non-empty array of file paths, got ${Array.isArray(paths) ? "[]" : describeValue(paths)}`);
    }
    if (paths.length > MAX_SHARDS) invalidArgument(`ShardedStore.concat: ${paths.length} paths is over the limit of ${MAX_SHARDS}`);
    if (typeof options !== "object" || options === null) invalidArgument("ShardedStore.concat: options must be an object");
    const maxOpenFiles = checkedMaxOpenFiles("ShardedStore.concat", options.maxOpenFiles);
    const files = paths.map((path, i) => {
      if (typeof path !== "string" || path.length === 0) invalidArgument(`ShardedStore.concat: paths[${i}] must be a path, got ${describeValue(path)}`);
      const absolute = resolve(path);
      let stat;
      try {
        stat = statSync(absolute);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") {
          throw new UmapError(ErrorCode.NOT_FOUND, `ShardedStore.concat: paths[${i}] ${absolute}: no such file`, { cause: error });
        }
        throw storeError(`ShardedStore.concat: paths[${i}] ${absolute}: cannot stat`, error);
      }
      if (stat.isDirectory()) invalidArgument(`ShardedStore.concat: paths[${i}] ${absolute} is a directory, not a file`);
      if (!stat.isFile()) invalidArgument(`ShardedStore.concat: paths[${i}] ${absolute} is not a regular file`);
      return { path: absolute, byteLength: stat.size };
    });
    return new ShardedStore({ kind: "concat", files, maxOpenFiles });
  }

  readonly size: number;
  readonly writable: boolean;
  readonly #layout: Layout;
  readonly #backend: ShardBackend;
  /** Concatenations only: where each file starts. */
  readonly #extents: Extent[] | undefined;
  #closed = false;
  /** S3, the instance create/open returned for writing: the writer's lease (workers have none). */
  #lease: S3Lease | undefined;
  /** S3, made by create(): the manifest still to be written (by flush or close, after the shards). */
  #manifestPending: Uint8Array | undefined;

  /** @internal Use create(), open() or concat(); workers build instances from describe(). */
  constructor(layout: Layout) {
    if (layout?.kind !== "datastore" && layout?.kind !== "concat" && layout?.kind !== "s3") {
      invalidArgument("ShardedStore: use ShardedStore.create(), open() or concat(), not new ShardedStore()");
    }
    this.#layout = layout;
    if (layout.kind === "datastore") {
      this.size = layout.size;
      this.writable = layout.writable;
      this.#extents = undefined;
      const { directory, shardName: template, shardSize, size } = layout;
      const parse = shardIndexParser(template);
      this.#backend = new LocalShardFiles({
        label: this.label,
        pathOf: (shardIndex) => join(directory, shardName(template, shardIndex)),
        byteLengthOf: (shardIndex) => Math.min(shardSize, size - shardIndex * shardSize),
        missing: "zeros",
        writable: layout.writable,
        maxOpenFiles: layout.maxOpenFiles,
        noFollow: true,
        listPresent: () => listDirectory(directory).filter((name) => parse(name) !== undefined).map((name) => join(directory, name)),
      });
    } else if (layout.kind === "s3") {
      this.size = layout.size;
      this.writable = layout.writable;
      this.#extents = undefined;
      const { shardName: template, shardSize, size } = layout;
      const objects = new S3Objects(resolveS3Config({ ...layout.s3, bucket: layout.bucket, key: keyIn(layout.prefix, MANIFEST_NAME) }, this.label));
      this.#backend = new S3ShardObjects({
        label: this.label,
        objects,
        keyOf: (shardIndex) => keyIn(layout.prefix, shardName(template, shardIndex)),
        byteLengthOf: (shardIndex) => Math.min(shardSize, size - shardIndex * shardSize),
        writable: layout.writable,
      });
    } else {
      const { files } = layout;
      this.#extents = extentsFromLengths(files.map((file) => file.byteLength));
      this.size = files.reduce((sum, file) => sum + file.byteLength, 0);
      this.writable = false;
      this.#backend = new LocalShardFiles({
        label: this.label,
        pathOf: (fileIndex) => files[fileIndex]!.path,
        byteLengthOf: (fileIndex) => files[fileIndex]!.byteLength,
        missing: "error",
        writable: false,
        maxOpenFiles: layout.maxOpenFiles,
        noFollow: false,
        listPresent: () => [],
      });
    }
  }

  get label(): string {
    const layout = this.#layout;
    if (layout.kind === "datastore") return `ShardedStore ${layout.directory}`;
    if (layout.kind === "s3") return `ShardedStore ${s3Label(layout)}`;
    const more = layout.files.length > 1 ? ` and ${layout.files.length - 1} more` : "";
    return `ShardedStore concat of ${layout.files[0]!.path}${more}`;
  }

  /** Shards of a datastore, or files of a concatenation. */
  get shardCount(): number {
    const layout = this.#layout;
    return layout.kind === "concat" ? layout.files.length : Math.ceil(layout.size / layout.shardSize);
  }

  /** Bytes per shard of a datastore; undefined for a concatenation. */
  get shardSize(): number | undefined {
    return this.#layout.kind === "concat" ? undefined : this.#layout.shardSize;
  }

  /** The datastore's location: its directory, or s3://bucket/prefix; undefined for a concatenation. */
  get location(): string | undefined {
    const layout = this.#layout;
    if (layout.kind === "datastore") return layout.directory;
    if (layout.kind === "s3") return `s3://${layout.bucket}/${layout.prefix}`;
    return undefined;
  }

  /** S3 datastores: request counters of this instance (PUTs, GETs, conflicts lost and redone). */
  get s3Stats(): { requests: number; retries: number; puts: number; gets: number; conflicts: number } | undefined {
    return this.#backend instanceof S3ShardObjects ? { ...this.#backend.stats } : undefined;
  }

  /** The datastore's directory; undefined for a concatenation. */
  get directory(): string | undefined {
    return this.#layout.kind === "datastore" ? this.#layout.directory : undefined;
  }

  /** Descriptors this instance has open now (at most maxOpenFiles). */
  get openFileCount(): number {
    return this.#backend instanceof LocalShardFiles ? this.#backend.openFileCount : 0;
  }

  describe(): StoreDescriptor {
    return { module: ShardedStore.MODULE, options: this.#layout };
  }

  /** Fills target with the bytes at byteOffset; a range over several shards is read piece by piece. */
  read(byteOffset: number, target: Uint8Array): void | Promise<void> {
    this.#checkOpen("read");
    const pending: Promise<void>[] = [];
    for (const piece of this.#pieces("read", byteOffset, target.length)) {
      const part = target.subarray(piece.bufferOffset, piece.bufferOffset + piece.byteLength);
      const found = this.#backend.readShard(piece.extentIndex, piece.extentOffset, part);
      if (found instanceof Promise) pending.push(found.then((present) => void (present || part.fill(0))));
      else if (!found) part.fill(0);
    }
    if (pending.length > 0) return Promise.all(pending).then(() => {});
  }

  /** Writes source at byteOffset; shards it reaches that do not exist yet are created. */
  write(byteOffset: number, source: Uint8Array): void | Promise<void> {
    this.#checkOpen("write");
    if (!this.writable) throw new UmapError(ErrorCode.UNSUPPORTED, `${this.label} is read-only (open it with { writable: true })`);
    const pending: Promise<void>[] = [];
    for (const piece of this.#pieces("write", byteOffset, source.length)) {
      const part = source.subarray(piece.bufferOffset, piece.bufferOffset + piece.byteLength);
      const written = this.#backend.writeShard(piece.extentIndex, piece.extentOffset, part);
      if (written instanceof Promise) pending.push(written);
    }
    if (pending.length > 0) return Promise.all(pending).then(() => {});
  }

  /**
   * Makes every write durable, including the ones the workers' instances made. On S3 every write
   * is durable when it resolves; the manifest of a new datastore is written here, after them.
   */
  flush(): void | Promise<void> {
    this.#checkOpen("flush");
    if (this.#layout.kind === "s3") return this.#flushS3();
    return this.#backend.flush();
  }

  async #flushS3(): Promise<void> {
    this.#lease?.check("flush");
    await this.#backend.flush();
    const manifest = this.#manifestPending;
    if (manifest === undefined) return;
    const layout = this.#layout as Extract<Layout, { kind: "s3" }>;
    const objects = (this.#backend as S3ShardObjects).objects;
    const key = keyIn(layout.prefix, MANIFEST_NAME);
    const put = await objects.put(key, manifest, "absent");
    if (put === "conflict") {
      // Under our lease nobody else may write one: a manifest there now is another writer's.
      throw new UmapError(ErrorCode.STORE, `${this.label}: ${objects.labelOf(key)} appeared while this writer held the lease; not overwritten`);
    }
    this.#manifestPending = undefined;
  }

  /** Closes its descriptors; reads and writes after close() are ERR_UMAP_CLOSED. Idempotent. */
  close(): void | Promise<void> {
    if (this.#closed) return;
    if (this.#layout.kind === "s3") return this.#closeS3();
    this.#closed = true;
    return this.#backend.close();
  }

  /** The manifest (if pending) is written before the lease is let go: the writer's last act. */
  async #closeS3(): Promise<void> {
    try {
      if (this.#manifestPending !== undefined) await this.#flushS3();
      await this.#lease?.release();
    } finally {
      this.#closed = true;
      this.#lease = undefined;
      await this.#backend.close();
    }
  }

  /** @internal Set by createOnS3/openOnS3 on the instance they return. */
  static adoptS3Writer(store: ShardedStore, lease: S3Lease | undefined, manifest: Uint8Array | undefined): void {
    store.#lease = lease;
    store.#manifestPending = manifest;
  }

  #checkOpen(method: string): void {
    if (this.#closed) throw new UmapError(ErrorCode.CLOSED, `${this.label} is closed: cannot use ${method}()`);
  }

  #pieces(method: string, byteOffset: number, byteLength: number): Iterable<Piece> {
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + byteLength > this.size) {
      invalidArgument(`${this.label}: ${method}() of bytes [${byteOffset}, ${byteOffset + byteLength}) is outside its ${this.size} bytes`);
    }
    const layout = this.#layout;
    return layout.kind === "concat" ? variablePieces(this.#extents!, byteOffset, byteLength) : fixedPieces(layout.shardSize, byteOffset, byteLength);
  }
}

export { ShardedStore };

/** The local directory a location names; S3 locations are refused until S3 datastores exist. */
function localDirectory(method: string, location: unknown, options: unknown): string {
  if (typeof location !== "string" || location.length === 0) {
    invalidArgument(`ShardedStore.${method}: location must be a directory path, got ${describeValue(location)}`);
  }
  const fields = typeof options === "object" && options !== null ? (options as { s3?: unknown; leaseTimeMs?: unknown }) : {};
  if (fields.s3 !== undefined) invalidArgument(`ShardedStore.${method} ${location}: option s3 is for s3://bucket/prefix locations, not a local directory`);
  if (fields.leaseTimeMs !== undefined) invalidArgument(`ShardedStore.${method} ${location}: option leaseTimeMs is for s3:// locations, not a local directory`);
  return resolve(location);
}

function checkedMaxOpenFiles(where: string, value: unknown): number {
  if (value === undefined) return DEFAULT_MAX_OPEN_FILES;
  if (!Number.isSafeInteger(value) || (value as number) < 1 || (value as number) > MAX_MAX_OPEN_FILES) {
    invalidArgument(`${where}: option maxOpenFiles must be a whole number from 1 to ${MAX_MAX_OPEN_FILES}, got ${describeValue(value)}`);
  }
  return value as number;
}

/** Reads and checks directory's manifest: each problem is an error naming the file. */
export function readManifest(directory: string): ShardedManifest {
  const path = join(directory, MANIFEST_NAME);
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO in the manifest's place must not block open() until a writer comes.
    fd = openSync(path, fs.O_RDONLY | fs.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new UmapError(ErrorCode.NOT_FOUND, `ShardedStore ${directory}: no datastore there (${path} is missing)`, { cause: error });
    }
    throw storeError(`ShardedStore ${directory}: cannot open ${path}`, error);
  }
  let text: string;
  try {
    // Only a regular file of a bounded size is read: a device (/dev/zero) or a huge file would
    // never finish or exhaust memory.
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new UmapError(ErrorCode.CORRUPT, `ShardedStore manifest ${path}: not a regular file`);
    if (stat.size > MANIFEST_BYTES_MAX) {
      throw new UmapError(ErrorCode.CORRUPT, `ShardedStore manifest ${path}: ${stat.size} bytes, over the ${MANIFEST_BYTES_MAX} a manifest may have`);
    }
    const bytes = new Uint8Array(stat.size);
    let done = 0;
    while (done < bytes.length) {
      const got = readSync(fd, bytes, done, bytes.length - done, done);
      if (got === 0) break;
      done += got;
    }
    text = new TextDecoder().decode(bytes.subarray(0, done));
  } catch (error) {
    throw storeError(`ShardedStore ${directory}: cannot read ${path}`, error);
  } finally {
    closeSync(fd);
  }
  return parseManifest(text, path);
}

/**
 * Checks a manifest's text; `path` names it in errors. Malformed is ERR_UMAP_CORRUPT, a version
 * newer than this library reads is ERR_UMAP_UNSUPPORTED. Fields it does not know are ignored, so
 * a version can gain optional fields without a new number.
 */
export function parseManifest(text: string, path: string): ShardedManifest {
  const corrupt = (problem: string, cause?: unknown) =>
    new UmapError(ErrorCode.CORRUPT, `ShardedStore manifest ${path}: ${problem}`, cause === undefined ? undefined : { cause });
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw corrupt(`not valid JSON (${describeError(error)})`, error);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw corrupt("not a JSON object");
  const fields = value as Record<string, unknown>;
  if (fields.format !== MANIFEST_FORMAT) throw corrupt(`format is ${describeValue(fields.format)}, expected "${MANIFEST_FORMAT}"`);
  const { version } = fields;
  if (!Number.isSafeInteger(version) || (version as number) < 1) throw corrupt(`version is ${describeValue(version)}, expected a whole number >= 1`);
  if (version !== MANIFEST_VERSION) {
    throw new UmapError(
      ErrorCode.UNSUPPORTED,
      `ShardedStore manifest ${path}: format version ${String(version)} is unknown; this bun-umap reads version ${MANIFEST_VERSION}`,
    );
  }
  const { size, shardSize, shardName: template } = fields;
  if (!Number.isSafeInteger(size) || (size as number) <= 0) throw corrupt(`size is ${describeValue(size)}, expected a whole number of bytes > 0`);
  if (!Number.isSafeInteger(shardSize) || (shardSize as number) <= 0) {
    throw corrupt(`shardSize is ${describeValue(shardSize)}, expected a whole number of bytes > 0`);
  }
  if (Math.ceil((size as number) / (shardSize as number)) > MAX_SHARDS) throw corrupt(`size / shardSize makes more than ${MAX_SHARDS} shards`);
  if (typeof template !== "string") throw corrupt(`shardName is ${describeValue(template)}, expected a file name holding {index}`);
  const problem = shardNameProblem(template);
  if (problem) throw corrupt(`shardName ${JSON.stringify(template)} ${problem}`);
  return { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, size: size as number, shardSize: shardSize as number, shardName: template };
}

/**
 * Why a shard name template is unsafe, or undefined. Every name it makes must be one plain file
 * directly inside the datastore's directory: no separator (so no "../x" and no absolute path),
 * not "." or "..", not hidden (temporary files start with "."), not the manifest.
 */
function shardNameProblem(template: string): string | undefined {
  if (template.split("{index}").length !== 2) return "must hold {index} exactly once";
  if (/[/\\]/.test(template)) return "would resolve outside the datastore's directory: it holds a path separator";
  if (/[\0-\x1f]/.test(template)) return "holds a control character";
  const first = shardName(template, 0);
  if (first.startsWith(".")) return "would resolve outside the datastore's directory or name a hidden file: it starts with \".\"";
  if (first === MANIFEST_NAME) return "names the manifest";
  if (Buffer.byteLength(shardName(template, MAX_SHARDS - 1)) > MAX_SHARD_NAME_BYTES) return `makes names over ${MAX_SHARD_NAME_BYTES} bytes`;
  // Belt and braces: whatever the rules above missed, the resolved name must stay in the directory.
  const root = resolve("/datastore");
  if (dirname(resolve(root, first)) !== root || basename(resolve(root, first)) !== first) return "would resolve outside the datastore's directory";
  return undefined;
}

function shardName(template: string, shardIndex: number): string {
  return template.replace("{index}", String(shardIndex).padStart(INDEX_DIGITS, "0"));
}

/** name -> shard index for names the template makes, else undefined. */
function shardIndexParser(template: string): (name: string) => number | undefined {
  const [prefix, suffix] = template.split("{index}") as [string, string];
  const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const pattern = new RegExp(`^${escape(prefix)}(\\d{${INDEX_DIGITS}})${escape(suffix)}$`);
  return (name) => {
    const match = pattern.exec(name);
    return match ? Number(match[1]) : undefined;
  };
}

/**
 * Checks every shard file present: a plain file (not a link, not a directory), of the size the
 * manifest gives its index, and not past the last shard. Each problem is ERR_UMAP_CORRUPT naming
 * the file. Temporary files (".*.tmp-*", left by a crash during shard creation) are ignored.
 */
function checkShards(directory: string, manifest: ShardedManifest): void {
  const parse = shardIndexParser(manifest.shardName);
  const shardCount = Math.ceil(manifest.size / manifest.shardSize);
  for (const name of listDirectory(directory)) {
    const shardIndex = parse(name);
    if (shardIndex === undefined) continue;
    const path = join(directory, name);
    if (shardIndex >= shardCount) {
      throw new UmapError(ErrorCode.CORRUPT, `ShardedStore ${directory}: ${path} is past the datastore's ${shardCount} shards (the manifest says ${manifest.size} bytes)`);
    }
    let stat;
    try {
      stat = lstatSync(path);
    } catch (error) {
      throw storeError(`ShardedStore ${directory}: cannot stat ${path}`, error);
    }
    if (stat.isSymbolicLink()) throw new UmapError(ErrorCode.CORRUPT, `ShardedStore ${directory}: ${path} is a symbolic link; shards must be files in the datastore`);
    if (!stat.isFile()) throw new UmapError(ErrorCode.CORRUPT, `ShardedStore ${directory}: ${path} is not a regular file`);
    const expected = Math.min(manifest.shardSize, manifest.size - shardIndex * manifest.shardSize);
    if (stat.size !== expected) {
      throw new UmapError(ErrorCode.CORRUPT, `ShardedStore ${directory}: ${path} is ${stat.size} bytes, the manifest says ${expected}`);
    }
  }
}

function listDirectory(directory: string): string[] {
  try {
    return readdirSync(directory);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new UmapError(ErrorCode.NOT_FOUND, `ShardedStore ${directory}: no such directory`, { cause: error });
    if (code === "ENOTDIR") invalidArgument(`ShardedStore ${directory}: not a directory`);
    throw storeError(`ShardedStore ${directory}: cannot list the directory`, error);
  }
}

let temporaryCount = 0;

/**
 * Writes name in directory all or nothing and never over an existing file: a temporary file is
 * written and fsynced, then linked to the name (link() fails if the name exists, where rename()
 * would replace it), and the directory fsynced. Returns false, changing nothing, if it existed.
 */
function writeNewFileAtomically(directory: string, name: string, bytes: Uint8Array): boolean {
  const path = join(directory, name);
  const temporary = join(directory, `.${name}.tmp-${process.pid}-${threadId}-${temporaryCount++}`);
  let placed = false;
  try {
    const fd = openSync(temporary, fs.O_WRONLY | fs.O_CREAT | fs.O_EXCL | fs.O_NOFOLLOW, 0o644);
    try {
      writeFully(fd, bytes, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(temporary, path);
      placed = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    unlinkSync(temporary);
  } catch (error) {
    try {
      unlinkSync(temporary);
    } catch {
      // Already unlinked, or never created: nothing to clean.
    }
    throw storeError(`ShardedStore ${directory}: cannot write ${path}`, error);
  }
  if (placed) fsyncDirectory(directory, `ShardedStore ${directory}`);
  return placed;
}

// ---- Datastores on S3: shards as objects under a prefix (see stores/lib/s3-shards.ts) ----

/** Largest shard on S3: every write-back uploads its whole shard, and a worker holds it in memory. */
export const S3_SHARD_BYTES_MAX = 64 * 1024 * 1024;
const DEFAULT_LEASE_TIME_MS = 5 * 60_000;
const LEASE_TIME_MS_MIN = 1_000;
const LEASE_TIME_MS_MAX = 24 * 60 * 60_000;
type S3Layout = Extract<Layout, { kind: "s3" }>;

/** `${prefix}/name`, or `name` at the bucket's root. */
function keyIn(prefix: string, name: string): string {
  return prefix.length === 0 ? name : `${prefix}/${name}`;
}

function s3Label(layout: { bucket: string; prefix: string; s3: S3Options }): string {
  const endpoint = layout.s3.endpoint ? ` at ${redactEndpoint(layout.s3.endpoint)}` : "";
  return `s3://${layout.bucket}/${layout.prefix}${endpoint}`;
}

function redactEndpoint(endpoint: string): string {
  try {
    const url = new URL(endpoint);
    url.username = "";
    url.password = "";
    url.search = "";
    return url.href;
  } catch {
    return "(an endpoint that is not a URL)";
  }
}

/** Checks the location and the S3 options common to create and open; returns the pieces of the layout. */
function s3Target(
  method: string,
  location: string,
  options: unknown,
): { bucket: string; prefix: string; s3: S3Options; leaseTimeMs: number; objects: S3Objects; label: string } {
  const where = `ShardedStore.${method} ${location}`;
  if (typeof options !== "object" || options === null) invalidArgument(`${where}: options must be an object`);
  const fields = options as { s3?: unknown; leaseTimeMs?: unknown; maxOpenFiles?: unknown };
  if (fields.maxOpenFiles !== undefined) invalidArgument(`${where}: option maxOpenFiles is for local datastores; an S3 datastore opens no files`);
  const { bucket, key } = parseS3Location(location, { requireKey: false });
  const prefix = key.replace(/\/+$/, "");
  const s3 = (fields.s3 ?? {}) as S3Options;
  if (typeof s3 !== "object" || s3 === null || Array.isArray(s3)) invalidArgument(`${where}: option s3 must be an object of S3 options, got ${describeValue(s3)}`);
  const leaseTimeMs = fields.leaseTimeMs ?? DEFAULT_LEASE_TIME_MS;
  if (!Number.isSafeInteger(leaseTimeMs) || (leaseTimeMs as number) < LEASE_TIME_MS_MIN || (leaseTimeMs as number) > LEASE_TIME_MS_MAX) {
    invalidArgument(`${where}: option leaseTimeMs must be a whole number of ms from ${LEASE_TIME_MS_MIN} to ${LEASE_TIME_MS_MAX}, got ${describeValue(leaseTimeMs)}`);
  }
  // A plain copy, as each worker gets one in the descriptor (and resolveS3Config checks it).
  const plain: S3Options = { ...s3 };
  const label = `ShardedStore ${s3Label({ bucket, prefix, s3: plain })}`;
  const objects = new S3Objects(resolveS3Config({ ...plain, bucket, key: keyIn(prefix, MANIFEST_NAME) }, label));
  return { bucket, prefix, s3: plain, leaseTimeMs: leaseTimeMs as number, objects, label };
}

async function createOnS3(location: string, options: ShardedCreateOptions): Promise<ShardedStore> {
  const where = `ShardedStore.create ${location}`;
  if (typeof options !== "object" || options === null) invalidArgument(`${where}: options { size, shardSize } are required`);
  const { size, shardSize } = options;
  if (!Number.isSafeInteger(size) || size <= 0) invalidArgument(`${where}: option size must be a whole number of bytes > 0, got ${describeValue(size)}`);
  if (!Number.isSafeInteger(shardSize) || shardSize <= 0 || shardSize > S3_SHARD_BYTES_MAX) {
    invalidArgument(`${where}: option shardSize must be a whole number of bytes from 1 to ${S3_SHARD_BYTES_MAX} on S3 (each write-back uploads its shard), got ${describeValue(shardSize)}`);
  }
  if (Math.ceil(size / shardSize) > MAX_SHARDS) invalidArgument(`${where}: ${size} bytes in shards of ${shardSize} makes more than ${MAX_SHARDS} shards`);
  const target = s3Target("create", location, options);
  const { objects, label, prefix } = target;
  let lease: S3Lease | undefined;
  try {
    await objects.checkBucket();
    lease = await S3Lease.acquire(objects, keyIn(prefix, LEASE_NAME), target.leaseTimeMs, label);
    const manifestKey = keyIn(prefix, MANIFEST_NAME);
    const others = (await objects.list(prefix.length === 0 ? "" : `${prefix}/`, 1, true)).filter((item) => item.key !== lease!.key);
    if (others.some((item) => item.key === manifestKey)) {
      invalidArgument(`${where}: a datastore already exists there (${objects.labelOf(manifestKey)}); open it instead`);
    }
    if (others.length > 0) {
      invalidArgument(`${where}: the prefix is not empty (it holds ${JSON.stringify(others[0]!.key)}); a datastore needs a prefix of its own`);
    }
  } catch (error) {
    await lease?.release().catch(() => {});
    objects.close();
    throw error;
  }
  const manifest: ShardedManifest = { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, size, shardSize, shardName: DEFAULT_SHARD_NAME };
  const layout: S3Layout = { kind: "s3", bucket: target.bucket, prefix, s3: target.s3, size, shardSize, shardName: DEFAULT_SHARD_NAME, writable: true };
  const store = new ShardedStore(layout);
  ShardedStore.adoptS3Writer(store, lease, new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`));
  return store;
}

async function openOnS3(location: string, options: ShardedOpenOptions): Promise<ShardedStore> {
  const where = `ShardedStore.open ${location}`;
  if (typeof options !== "object" || options === null) invalidArgument(`${where}: options must be an object`);
  if (options.writable !== undefined && typeof options.writable !== "boolean") {
    invalidArgument(`${where}: option writable must be a boolean, got ${describeValue(options.writable)}`);
  }
  const target = s3Target("open", location, options);
  const { objects, label, prefix } = target;
  const writable = options.writable === true;
  let lease: S3Lease | undefined;
  let manifest: ShardedManifest;
  try {
    const manifestKey = keyIn(prefix, MANIFEST_NAME);
    const got = await objects.get(manifestKey, undefined, MANIFEST_BYTES_MAX);
    if (!got) {
      await objects.checkBucket();
      throw new UmapError(ErrorCode.NOT_FOUND, `${label}: no datastore there (${objects.labelOf(manifestKey)} is missing)`);
    }
    if (got.objectSize > MANIFEST_BYTES_MAX) {
      throw new UmapError(ErrorCode.CORRUPT, `ShardedStore manifest ${objects.labelOf(manifestKey)}: ${got.objectSize} bytes, over the ${MANIFEST_BYTES_MAX} a manifest may have`);
    }
    manifest = parseManifest(new TextDecoder().decode(got.bytes), objects.labelOf(manifestKey));
    await checkS3Shards(objects, prefix, manifest, label);
    if (writable) lease = await S3Lease.acquire(objects, keyIn(prefix, LEASE_NAME), target.leaseTimeMs, label);
  } finally {
    // The lease keeps the client for its renewals, and closes it when released.
    if (!lease) objects.close();
  }
  const { size, shardSize, shardName: template } = manifest;
  const store = new ShardedStore({ kind: "s3", bucket: target.bucket, prefix, s3: target.s3, size, shardSize, shardName: template, writable });
  ShardedStore.adoptS3Writer(store, lease, undefined);
  return store;
}

/** Every shard object present must be of the size the manifest gives its index, and not past the last. */
async function checkS3Shards(objects: S3Objects, prefix: string, manifest: ShardedManifest, label: string): Promise<void> {
  const parse = shardIndexParser(manifest.shardName);
  const shardCount = Math.ceil(manifest.size / manifest.shardSize);
  const listPrefix = prefix.length === 0 ? "" : `${prefix}/`;
  // The shards, the manifest, the lease, and a little room for objects of other names.
  for (const item of await objects.list(listPrefix, shardCount + 1000)) {
    const name = item.key.slice(listPrefix.length);
    const shardIndex = parse(name);
    if (shardIndex === undefined) continue;
    if (shardIndex >= shardCount) {
      throw new UmapError(ErrorCode.CORRUPT, `${label}: ${objects.labelOf(item.key)} is past the datastore's ${shardCount} shards (the manifest says ${manifest.size} bytes)`);
    }
    const expected = Math.min(manifest.shardSize, manifest.size - shardIndex * manifest.shardSize);
    if (item.byteLength !== expected) {
      throw new UmapError(ErrorCode.CORRUPT, `${label}: ${objects.labelOf(item.key)} is ${item.byteLength} bytes, the manifest says ${expected}`);
    }
  }
}
