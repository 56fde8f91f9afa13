/**
 * Byte-range access: the one thing a store built on top of a blob (Lz4Store's packed file) needs
 * from where the blob lives. A local file is here; an S3 object implements the same interface
 * with ranged GETs. Keeping the interface this small is what lets the packed format work over
 * any backend.
 */
import { closeSync, fstatSync, openSync, readSync, statSync, constants as fs } from "node:fs";
import { resolve } from "node:path";
import { ErrorCode, UmapError, describeError, invalidArgument } from "../../src/errors.ts";

export interface ByteRange {
  /** Bytes in the blob when it was opened (or last refreshed). */
  readonly size: number;
  /** Names the blob in messages: a path or an s3:// URL. */
  readonly label: string;
  /** Fills `target` completely with the bytes at `byteOffset`; fails past the end. */
  read(byteOffset: number, target: Uint8Array): void | Promise<void>;
  /** Writes `source` at `byteOffset` (backends that can). */
  write?(byteOffset: number, source: Uint8Array): void | Promise<void>;
  close?(): void | Promise<void>;
}

/** A local regular file, read with pread on one descriptor. */
export class LocalFileRange implements ByteRange {
  readonly path: string;
  #fd: number;
  #size: number;

  constructor(path: string) {
    this.path = resolve(path);
    this.#fd = openRegularFile(this.path, false);
    this.#size = fstatSync(this.#fd).size;
  }

  get label(): string {
    return this.path;
  }

  get size(): number {
    return this.#size;
  }

  /** The descriptor, for callers that need more than reads (fstat, fsync). */
  get fd(): number {
    return this.#fd;
  }

  /** Looks at the file's size again (it grows while a writable store appends) and returns it. */
  refreshSize(): number {
    this.#size = fstatSync(this.#fd).size;
    return this.#size;
  }

  read(byteOffset: number, target: Uint8Array): void {
    if (byteOffset + target.length > this.#size && byteOffset + target.length > this.refreshSize()) {
      throw new UmapError(
        ErrorCode.CORRUPT,
        `${this.path}: bytes [${byteOffset}, ${byteOffset + target.length}) are past the end of the file (${this.#size} bytes): is it truncated?`,
      );
    }
    let done = 0;
    while (done < target.length) {
      const got = readSync(this.#fd, target, done, target.length - done, byteOffset + done);
      if (got === 0) {
        throw new UmapError(ErrorCode.CORRUPT, `${this.path}: file ended at byte ${byteOffset + done} while reading (was it truncated?)`);
      }
      done += got;
    }
  }

  close(): void {
    if (this.#fd >= 0) closeSync(this.#fd);
    this.#fd = -1;
  }
}

/** Bytes in memory as a range (tests, and checking a packed file held in memory). */
export class MemoryRange implements ByteRange {
  readonly label: string;
  readonly #bytes: Uint8Array;

  constructor(bytes: Uint8Array, label = "memory") {
    this.#bytes = bytes;
    this.label = label;
  }

  get size(): number {
    return this.#bytes.length;
  }

  read(byteOffset: number, target: Uint8Array): void {
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + target.length > this.#bytes.length) {
      throw new UmapError(
        ErrorCode.CORRUPT,
        `${this.label}: bytes [${byteOffset}, ${byteOffset + target.length}) are past its end (${this.#bytes.length} bytes)`,
      );
    }
    target.set(this.#bytes.subarray(byteOffset, byteOffset + target.length));
  }
}

/** Opens a regular file (never a FIFO or device), with errors that name it. */
export function openRegularFile(path: string, writable: boolean, what = "file"): number {
  try {
    // Look before opening: opening a FIFO would block until a writer appears.
    const stat = statSync(path);
    if (stat.isDirectory()) invalidArgument(`${path}: is a directory, not a ${what}`);
    if (!stat.isFile()) invalidArgument(`${path}: is not a regular file`);
    return openSync(path, (writable ? fs.O_RDWR : fs.O_RDONLY) | fs.O_NONBLOCK);
  } catch (error) {
    if (error instanceof UmapError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new UmapError(ErrorCode.NOT_FOUND, `${path}: no such ${what}`, { cause: error });
    }
    throw new UmapError(ErrorCode.STORE, `${path}: cannot open: ${describeError(error)}`, { cause: error });
  }
}
