/**
 * FileStore: a local file, or a part of one, as a store. Reads and writes use pread/pwrite on one
 * descriptor. umap() gives the region a duplicate of it that every worker's instance borrows, so
 * a region costs one descriptor however many workers serve it.
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, statSync, writeSync, constants as fs } from "node:fs";
import { resolve } from "node:path";
import { ErrorCode, UmapError, describeError, invalidArgument } from "../src/errors.ts";
import type { Store, StoreDescriptor } from "../src/store.ts";

export interface FileStoreOptions {
  /** Open for writing too. Default false. */
  writable?: boolean;
  /** Byte offset in the file where the store starts. Default 0. */
  offset?: number;
  /** Bytes of the file the store covers. Default: from `offset` to the end of the file. */
  length?: number;
}

/** The options a worker gets: the path travels with them, and the descriptor to borrow. */
interface FileStoreConfig extends FileStoreOptions {
  path: string;
  /** An open descriptor of the file to use instead of opening it; not closed by close(). */
  fd?: number;
}

export default class FileStore implements Store {
  /** This module: descriptors that name it build a FileStore. */
  static readonly MODULE = import.meta.url;
  readonly path: string;
  readonly offset: number;
  readonly size: number;
  readonly writable: boolean;
  #fd: number;
  readonly #ownsFd: boolean;

  constructor(path: string, options?: FileStoreOptions);
  constructor(config: FileStoreConfig);
  constructor(pathOrConfig: string | FileStoreConfig, options: FileStoreOptions = {}) {
    const config: FileStoreConfig =
      typeof pathOrConfig === "string" ? { ...options, path: pathOrConfig } : { ...pathOrConfig };
    if (typeof config.path !== "string" || config.path.length === 0) {
      const got = typeof pathOrConfig === "string" ? '""' : typeof pathOrConfig === "object" ? typeof config.path : typeof pathOrConfig;
      invalidArgument(`FileStore: path must be a non-empty string, got ${got}`);
    }
    if (config.writable !== undefined && typeof config.writable !== "boolean") {
      invalidArgument(`FileStore ${config.path}: option writable must be a boolean`);
    }
    const offset = config.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0) {
      invalidArgument(`FileStore ${config.path}: option offset must be a whole number >= 0, got ${String(offset)}`);
    }
    if (config.length !== undefined && (!Number.isSafeInteger(config.length) || config.length < 0)) {
      invalidArgument(`FileStore ${config.path}: option length must be a whole number >= 0, got ${String(config.length)}`);
    }

    this.path = resolve(config.path);
    this.writable = config.writable === true;
    this.offset = offset;
    this.#ownsFd = config.fd === undefined;
    this.#fd = config.fd ?? openFile(this.path, this.writable);
    try {
      const stat = fstatSync(this.#fd);
      if (stat.isDirectory()) invalidArgument(`FileStore ${this.path}: is a directory, not a file`);
      if (!stat.isFile()) invalidArgument(`FileStore ${this.path}: is not a regular file`);
      if (offset > stat.size) {
        invalidArgument(`FileStore ${this.path}: offset ${offset} is past the end of the file (${stat.size} bytes)`);
      }
      const length = config.length ?? stat.size - offset;
      if (offset + length > stat.size) {
        invalidArgument(
          `FileStore ${this.path}: offset ${offset} + length ${length} is past the end of the file (${stat.size} bytes)`,
        );
      }
      this.size = length;
    } catch (error) {
      if (this.#ownsFd) closeSync(this.#fd);
      throw error;
    }
  }

  /** The open descriptor (umap() duplicates it for the region's workers). */
  get fd(): number {
    return this.#fd;
  }

  get label(): string {
    return `FileStore ${this.path}`;
  }

  /** How workers construct their instance; with `fd`, they borrow that descriptor. */
  describe(shared: { fd?: number } = {}): StoreDescriptor {
    const config: FileStoreConfig = { path: this.path, offset: this.offset, length: this.size, writable: this.writable, ...shared };
    return { module: FileStore.MODULE, options: config };
  }

  read(byteOffset: number, target: Uint8Array): void {
    this.#checkOpen("read");
    let done = 0;
    while (done < target.length) {
      const got = readSync(this.#fd, target, done, target.length - done, this.offset + byteOffset + done);
      if (got === 0) {
        throw new UmapError(
          ErrorCode.STORE,
          `FileStore ${this.path}: file ended at byte ${this.offset + byteOffset + done}, before the ${this.size} bytes mapped (was it truncated?)`,
        );
      }
      done += got;
    }
  }

  write(byteOffset: number, source: Uint8Array): void {
    this.#checkOpen("write");
    if (!this.writable) throw new UmapError(ErrorCode.UNSUPPORTED, `FileStore ${this.path}: opened read-only`);
    let done = 0;
    while (done < source.length) {
      done += writeSync(this.#fd, source, done, source.length - done, this.offset + byteOffset + done);
    }
  }

  flush(): void {
    this.#checkOpen("flush");
    if (this.writable) fsyncSync(this.#fd);
  }

  /** A closed store's descriptor number may already belong to another file: refuse, never guess. */
  #checkOpen(method: string): void {
    if (this.#fd < 0) throw new UmapError(ErrorCode.CLOSED, `FileStore ${this.path} is closed: cannot use ${method}()`);
  }

  close(): void {
    if (this.#fd >= 0 && this.#ownsFd) closeSync(this.#fd);
    this.#fd = -1;
  }
}

export { FileStore };

function openFile(path: string, writable: boolean): number {
  try {
    // Look before opening: opening a FIFO would block until a writer appears.
    const stat = statSync(path);
    if (stat.isDirectory()) invalidArgument(`FileStore ${path}: is a directory, not a file`);
    if (!stat.isFile()) invalidArgument(`FileStore ${path}: is not a regular file`);
    // O_NONBLOCK too, in case the path is swapped for a FIFO in between; files ignore it.
    return openSync(path, (writable ? fs.O_RDWR : fs.O_RDONLY) | fs.O_NONBLOCK);
  } catch (error) {
    if (error instanceof UmapError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new UmapError(ErrorCode.NOT_FOUND, `FileStore ${path}: no such file`, { cause: error });
    }
    throw new UmapError(ErrorCode.STORE, `FileStore ${path}: cannot open: ${describeError(error)}`, { cause: error });
  }
}
