/**
 * Per-shard byte access: everything a sharded layout does to one shard goes through a
 * ShardBackend, so the layout (stores/sharded.ts) can sit on another backend (objects on S3) by
 * implementing this interface. LocalShardFiles keeps shards as files in a local directory.
 *
 * Methods may return a Promise (a network backend will); the local one never does.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, linkSync, openSync, readSync, unlinkSync, writeSync, constants as fs } from "node:fs";
import { basename, dirname, join } from "node:path";
import { threadId } from "node:worker_threads";
import { ErrorCode, UmapError, describeError } from "../../src/errors.ts";
import { FdCache } from "./fd-cache.ts";

export interface ShardBackend {
  /**
   * Fills target with shard shardIndex's bytes from extentOffset. Returns false, filling
   * nothing, if the shard was never written (the caller reads zeros).
   */
  readShard(shardIndex: number, extentOffset: number, target: Uint8Array): boolean | Promise<boolean>;
  /** Writes source at extentOffset; a shard that does not exist yet is created, atomically. */
  writeShard(shardIndex: number, extentOffset: number, source: Uint8Array): void | Promise<void>;
  /** Makes every write so far durable. */
  flush(): void | Promise<void>;
  close(): void | Promise<void>;
}

export interface LocalShardFilesOptions {
  /** Names the store in messages. */
  label: string;
  /** The file of shard i. Datastore shards are all in one directory (where new ones are made). */
  pathOf(shardIndex: number): string;
  /** Bytes shard i holds: a shard file of another size is an error. */
  byteLengthOf(shardIndex: number): number;
  /** A missing file: "zeros" (a datastore's shard never written) or "error" (a concatenation's file). */
  missing: "zeros" | "error";
  /** Open for writing; only datastores are. */
  writable: boolean;
  /** Descriptors this instance keeps open at most. */
  maxOpenFiles: number;
  /** Refuse shard files that are symbolic links: a datastore's names its own files. */
  noFollow: boolean;
  /** Paths of the shards present, for flush() (workers wrote them through their own instances). */
  listPresent(): string[];
}

/** Zeros to compare against, so a zero write to a missing shard can be skipped at memcmp speed. */
const ZEROS = new Uint8Array(64 * 1024);
/** Temporary names are unique per process, thread and count (see createShard). */
let temporaryCount = 0;

export class LocalShardFiles implements ShardBackend {
  readonly #options: LocalShardFilesOptions;
  readonly #fds: FdCache;
  /** Shards whose file size was checked since their descriptor was opened. */
  readonly #checked = new Set<number>();

  constructor(options: LocalShardFilesOptions) {
    this.#options = options;
    this.#fds = new FdCache({ limit: options.maxOpenFiles, writable: options.writable, noFollow: options.noFollow });
  }

  /** Descriptors open now (tests check the bound). */
  get openFileCount(): number {
    return this.#fds.openCount;
  }

  readShard(shardIndex: number, extentOffset: number, target: Uint8Array): boolean {
    const fd = this.#fd(shardIndex);
    if (fd === undefined) return false;
    const path = this.#options.pathOf(shardIndex);
    let done = 0;
    while (done < target.length) {
      let got: number;
      try {
        got = readSync(fd, target, done, target.length - done, extentOffset + done);
      } catch (error) {
        this.#forget(shardIndex);
        throw storeError(`${this.#options.label}: reading ${path} at byte ${extentOffset + done}`, error);
      }
      if (got === 0) {
        this.#forget(shardIndex);
        throw new UmapError(ErrorCode.STORE, `${this.#options.label}: ${path} ended at byte ${extentOffset + done} (was it truncated?)`);
      }
      done += got;
    }
    return true;
  }

  writeShard(shardIndex: number, extentOffset: number, source: Uint8Array): void {
    const path = this.#options.pathOf(shardIndex);
    let fd = this.#fd(shardIndex);
    if (fd === undefined) {
      // A shard that does not exist reads as zeros: writing zeros to it changes nothing.
      if (isAllZero(source)) return;
      if (this.#createShard(shardIndex, extentOffset, source)) return;
      // Another worker created it first: write into theirs.
      fd = this.#fd(shardIndex);
      if (fd === undefined) throw new UmapError(ErrorCode.STORE, `${this.#options.label}: ${path} vanished while it was being created`);
    }
    try {
      writeFully(fd, source, extentOffset);
    } catch (error) {
      this.#forget(shardIndex);
      throw storeError(`${this.#options.label}: writing ${path} at byte ${extentOffset}`, error);
    }
  }

  /** fsync of every shard present (one open each), then of the directory for new names. */
  flush(): void {
    if (!this.#options.writable) return;
    const directories = new Set<string>();
    for (const path of this.#options.listPresent()) {
      directories.add(dirname(path));
      try {
        const fd = openSync(path, fs.O_RDONLY | fs.O_NOFOLLOW);
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
      } catch (error) {
        throw storeError(`${this.#options.label}: fsync of ${path}`, error);
      }
    }
    for (const directory of directories) fsyncDirectory(directory, this.#options.label);
  }

  close(): void {
    this.#fds.closeAll();
    this.#checked.clear();
  }

  /** The shard's descriptor, or undefined if its file does not exist; its size is checked once. */
  #fd(shardIndex: number): number | undefined {
    const { label, pathOf, byteLengthOf, missing } = this.#options;
    const path = pathOf(shardIndex);
    let fd: number | undefined;
    try {
      fd = this.#fds.get(path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ELOOP") {
        throw new UmapError(ErrorCode.CORRUPT, `${label}: ${path} is a symbolic link; shards must be files in the datastore`, { cause: error });
      }
      throw storeError(`${label}: cannot open ${path}`, error);
    }
    if (fd === undefined) {
      if (missing === "error") throw new UmapError(ErrorCode.STORE, `${label}: ${path} is gone`);
      return undefined;
    }
    if (!this.#checked.has(shardIndex)) {
      const stat = fstatSync(fd);
      const expected = byteLengthOf(shardIndex);
      if (!stat.isFile() || stat.size !== expected) {
        this.#fds.forget(path);
        const actual = stat.isFile() ? `is ${stat.size} bytes` : "is not a regular file";
        throw missing === "error"
          ? new UmapError(ErrorCode.STORE, `${label}: ${path} ${actual}, expected ${expected} (it changed after concat())`)
          : new UmapError(ErrorCode.CORRUPT, `${label}: ${path} ${actual}, the manifest says ${expected}`);
      }
      this.#checked.add(shardIndex);
    }
    return fd;
  }

  #forget(shardIndex: number): void {
    this.#fds.forget(this.#options.pathOf(shardIndex));
    this.#checked.delete(shardIndex);
  }

  /**
   * Creates a shard holding source at extentOffset and zeros elsewhere, all or nothing: a
   * temporary file in the same directory is sized (sparse), written and fsynced, then linked to
   * the shard's name. link() fails with EEXIST if another worker got there first, where rename()
   * would silently replace their shard and lose their write. Returns false in that case.
   */
  #createShard(shardIndex: number, extentOffset: number, source: Uint8Array): boolean {
    const { label, pathOf, byteLengthOf } = this.#options;
    const path = pathOf(shardIndex);
    const directory = dirname(path);
    const temporary = join(directory, `.${basename(path)}.tmp-${process.pid}-${threadId}-${temporaryCount++}`);
    let fd: number;
    try {
      fd = openSync(temporary, fs.O_RDWR | fs.O_CREAT | fs.O_EXCL | fs.O_NOFOLLOW, 0o644);
    } catch (error) {
      throw storeError(`${label}: cannot create ${temporary}`, error);
    }
    let linked = false;
    try {
      ftruncateSync(fd, byteLengthOf(shardIndex));
      writeFully(fd, source, extentOffset);
      fsyncSync(fd);
      try {
        linkSync(temporary, path);
        linked = true;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      unlinkSync(temporary);
    } catch (error) {
      closeSync(fd);
      try {
        unlinkSync(temporary);
      } catch {
        // Already unlinked, or never fully made: nothing to clean.
      }
      throw storeError(`${label}: cannot create ${path}`, error);
    }
    if (!linked) {
      closeSync(fd);
      return false;
    }
    // The new name must survive a crash too, or the shard's data would be lost with it.
    fsyncDirectory(directory, label);
    this.#fds.add(path, fd);
    this.#checked.add(shardIndex);
    return true;
  }
}

function isAllZero(bytes: Uint8Array): boolean {
  for (let offset = 0; offset < bytes.length; offset += ZEROS.length) {
    const length = Math.min(ZEROS.length, bytes.length - offset);
    if (Buffer.compare(bytes.subarray(offset, offset + length), ZEROS.subarray(0, length)) !== 0) return false;
  }
  return true;
}

export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

export function fsyncDirectory(directory: string, label: string): void {
  try {
    const fd = openSync(directory, fs.O_RDONLY | fs.O_DIRECTORY);
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    throw storeError(`${label}: fsync of the directory ${directory}`, error);
  }
}

export function storeError(message: string, error: unknown): UmapError {
  if (error instanceof UmapError) return error;
  return new UmapError(ErrorCode.STORE, `${message}: ${describeError(error)}`, { cause: error });
}
