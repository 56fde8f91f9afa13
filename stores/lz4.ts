/**
 * Lz4Store: a packed, LZ4-compressed file (format in lib/lz4-format.ts and the README) mapped as
 * if it were the raw data. Fill workers decompress a chunk at a time and check every chunk's
 * xxHash3 before any byte of it is served: corruption is an ERR_UMAP_CORRUPT error, never data.
 *
 * Writing. Each fill and evictor worker has its own instance, so the write path is built so
 * that instances never need to talk to each other:
 *  - Every write-back appends self-describing records (a 32-byte checked header, then the
 *    chunk) with one write(2) on an O_APPEND descriptor. The kernel serializes appends to a
 *    file, so records never interleave and a record that is complete lies wholly before any
 *    record still being written.
 *  - Every instance of the writing session learns the other instances' appends by scanning the
 *    records after the point where the session began (`sessionStart`), before each read. A
 *    fill after a write-back therefore sees it, whichever worker wrote it. The engine keeps at
 *    most one write-back of a page in flight, so when pages cover whole chunks the file order
 *    of two records for one chunk is the order they were written. A page smaller than a chunk
 *    is a read-modify-write of the chunk, done under that chunk's lock file
 *    (`<file>.lock.chunk-N`) after a scan, so it starts from the latest record of the chunk.
 *  - Only the instance Lz4Store.open() returned (the owner; the region's main-thread store)
 *    rewrites the index: flush() appends an index record holding every chunk's latest record,
 *    fsyncs, then rewrites the older of the two root slots in the header and fsyncs again. A
 *    crash at any point leaves one valid root naming a complete, durable index: the last
 *    flushed state. Reopening for writing truncates what the last flush did not cover.
 *  - One writer at a time: the owner holds `<file>.lock` (its pid) while open for writing.
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readSync, realpathSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync, constants as fs } from "node:fs";
import { tmpdir } from "node:os";
import { isMainThread } from "node:worker_threads";
import { basename, dirname, join, resolve } from "node:path";
import { compressSync, uncompressSync } from "lz4-napi";
import { ErrorCode, UmapError, describeError, describeValue, invalidArgument } from "../src/errors.ts";
import type { Store, StoreDescriptor } from "../src/store.ts";
import { LocalFileRange, openRegularFile, type ByteRange } from "./lib/byte-range.ts";
import { S3Objects } from "./lib/s3-objects.ts";
import { isS3Location, parseS3Location } from "./lib/s3-location.ts";
import { resolveS3Config, S3Range, type S3Options, type S3RangeConfig } from "./lib/s3-range.ts";

/**
 * The largest packed file pack() uploads: it is sent with one PutObject from memory. Larger
 * files would need a multipart upload, which is not implemented.
 */
const S3_PUT_BYTES_MAX = 1024 * 1024 * 1024;
import {
  CHUNK_COUNT_MAX,
  CHUNK_SIZE_DEFAULT,
  CHUNK_SIZE_MAX,
  CHUNK_SIZE_MIN,
  ChunkIndex,
  FILE_HEADER_BYTES,
  INDEX_ENTRY_BYTES,
  RECORD_HEADER_BYTES,
  ROOT_SLOT_OFFSETS,
  RecordKind,
  checkChunkRecord,
  chooseRoot,
  chunkByteLength,
  chunkCountOf,
  corrupt,
  decodeFileHeader,
  decodeIndex,
  decodeRecordHeader,
  encodeFileHeader,
  encodeRecordHeader,
  encodeRootSlot,
  hash64,
  isPowerOfTwo,
  writeRecordHeader,
  type FileHeader,
  type RecordHeader,
  type RootSlot,
} from "./lib/lz4-format.ts";

export type { S3Options };

export interface Lz4PackOptions {
  /** Bytes of uncompressed data per chunk: a power of two, 4 KiB to 16 MiB. Default 64 KiB. */
  chunkSize?: number;
  s3?: S3Options;
}

export interface Lz4OpenOptions {
  /** Open for writing: dirty pages are recompressed and appended. Default false. */
  writable?: boolean;
  s3?: S3Options;
}

export interface Lz4Info {
  path: string;
  /** Bytes of the packed file. */
  fileByteLength: number;
  /** Bytes of the data it holds. */
  uncompressedSize: number;
  chunkSize: number;
  chunkCount: number;
  lz4ChunkCount: number;
  rawChunkCount: number;
  /** Bytes of the file held by superseded records and old indexes, which compact() reclaims. */
  supersededByteLength: number;
  /** uncompressedSize / fileByteLength. */
  ratio: number;
}

export interface Lz4Verification {
  chunkCount: number;
  /** Every chunk that failed, with the reason. */
  badChunks: { chunkIndex: number; message: string }[];
}

/** What a worker's instance is built from. */
interface Lz4Config {
  path: string;
  /** A packed file on S3: the object, pinned (size, ETag, the shared chunk table) by the owner. */
  s3?: S3RangeConfig;
  writable?: boolean;
  /** Byte offset where the writing session's appends began (writable instances). */
  sessionStart?: number;
}

/** `<file>.lock.chunk-N` guards the read-modify-write of chunk N. */
const CHUNK_LOCK_INFIX = ".lock.chunk-";
/** A chunk lock held longer than this is reported rather than waited for. */
const CHUNK_LOCK_TIMEOUT_MS = 10_000;
/** Lets a thread sleep between looks at a busy chunk lock (Atomics.wait on a cell no one wakes). */
const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Reads of several chunk records at once are capped at this many bytes (one record may exceed it). */
const SPAN_BYTES_MAX = 4 * 1024 * 1024;
/** pack() and unpack() move data in pieces of about this size. */
const COPY_BYTES = 4 * 1024 * 1024;

export default class Lz4Store implements Store {
  /** This module: descriptors that name it build an Lz4Store. */
  static readonly MODULE = import.meta.url;
  readonly path: string;
  readonly writable: boolean;
  /** Where this writing session's appends began: the owner sets it at open, workers get it. */
  #sessionStart: number | undefined;
  /** The instance open() returned: the only one that rewrites the index and holds the lock. */
  #owner = false;
  #range: ByteRange | undefined;
  #file: LocalFileRange | undefined;
  /** O_APPEND descriptor for records (writable instances). */
  #appendFd = -1;
  /** O_WRONLY descriptor for root slots (the writable owner). */
  #rootFd = -1;
  #lockPath: string | undefined;
  #header: FileHeader | undefined;
  #root: RootSlot | undefined;
  #rootSlotIndex = 0;
  #index: ChunkIndex | undefined;
  /** Writable instances: the next byte to scan for records appended by any instance. */
  #scanPosition = 0;
  /** Records scanned or written since the last index the owner wrote. */
  #unflushed = false;
  #scratch = new Uint8Array(0);
  #cachedChunkIndex = -1;
  #cachedChunk: Uint8Array | undefined;
  #closed = false;
  /** The object, for a packed file on S3 (read-only). */
  #s3Config: S3RangeConfig | undefined;
  #s3Range: S3Range | undefined;

  /** Workers construct instances from describe(); applications use Lz4Store.open(). */
  constructor(config: Lz4Config) {
    if (typeof config !== "object" || config === null || typeof config.path !== "string" || config.path.length === 0) {
      invalidArgument("Lz4Store: use Lz4Store.open(location) to open a packed file");
    }
    // A URL-like label ("s3://...", "memory:...") of a byte range is kept as it is.
    this.path = /^[a-z][a-z0-9+.-]*:/i.test(config.path) ? config.path : resolve(config.path);
    this.writable = config.writable === true;
    if (config.sessionStart !== undefined && (!Number.isSafeInteger(config.sessionStart) || config.sessionStart < FILE_HEADER_BYTES)) {
      invalidArgument(`Lz4Store ${this.path}: sessionStart must be a byte offset >= ${FILE_HEADER_BYTES}, got ${describeValue(config.sessionStart)}`);
    }
    this.#sessionStart = config.sessionStart;
    if (config.s3 !== undefined) {
      if (this.writable) throw s3WritableError(this.path);
      this.#s3Config = config.s3;
    }
  }

  /** Opens a packed file made by Lz4Store.pack(); checks its header, root and index. */
  static async open(location: string, options: Lz4OpenOptions = {}): Promise<Lz4Store> {
    checkOptions("Lz4Store.open", options, ["writable", "s3"]);
    if (options.writable !== undefined && typeof options.writable !== "boolean") {
      invalidArgument(`Lz4Store.open ${String(location)}: option writable must be a boolean, got ${describeValue(options.writable)}`);
    }
    if (typeof location === "string" && isS3Location(location)) {
      if (options.writable === true) throw s3WritableError(location);
      const { bucket, key } = parseS3Location(location);
      const s3 = checkS3Option("Lz4Store.open", location, options.s3);
      const store = new Lz4Store({ path: `s3://${bucket}/${key}`, s3: { ...s3, bucket, key } });
      store.#owner = true;
      await store.#load();
      return store;
    }
    const path = localPath("Lz4Store.open", location, options.s3);
    const store = new Lz4Store({ path, writable: options.writable === true });
    store.#owner = true;
    await store.#load();
    return store;
  }

  /**
   * Opens a packed file read-only over any byte range (a file held in memory, or a backend such
   * as S3 that implements ByteRange). Such a store can be read and verified on this thread; it
   * cannot back a region, whose workers need a location to open.
   */
  static async openRange(range: ByteRange): Promise<Lz4Store> {
    const store = new Lz4Store({ path: range.label });
    store.#owner = true;
    store.#range = range;
    try {
      await store.#loadFrom(range);
    } catch (error) {
      store.close();
      throw error;
    }
    return store;
  }

  /**
   * Packs `source` (a local file) into `target`, a new packed file. Written beside the target
   * under a temporary name and renamed into place, so a failed pack leaves no partial file.
   */
  static async pack(source: string, target: string, options: Lz4PackOptions = {}): Promise<void> {
    checkOptions("Lz4Store.pack", options, ["chunkSize", "s3"]);
    const chunkSize = options.chunkSize ?? CHUNK_SIZE_DEFAULT;
    if (!isPowerOfTwo(chunkSize) || chunkSize < CHUNK_SIZE_MIN || chunkSize > CHUNK_SIZE_MAX) {
      invalidArgument(`Lz4Store.pack: option chunkSize must be a power of two from ${CHUNK_SIZE_MIN} to ${CHUNK_SIZE_MAX}, got ${describeValue(chunkSize)}`);
    }
    if (typeof source === "string" && isS3Location(source)) {
      throw new UmapError(ErrorCode.UNSUPPORTED, `Lz4Store.pack source ${source}: the source must be a local file (download the object first)`);
    }
    if (typeof target === "string" && isS3Location(target)) return packToS3(source, target, options);
    const sourcePath = localPath("Lz4Store.pack source", source, options.s3);
    let targetPath = localPath("Lz4Store.pack target", target, options.s3);
    if (sourcePath === targetPath) invalidArgument(`Lz4Store.pack: source and target are the same file, ${sourcePath}`);
    const input = new LocalFileRange(sourcePath);
    try {
      targetPath = newFileTarget("Lz4Store.pack", targetPath, input.fd);
      const size = input.size;
      const chunkCount = chunkCountOf(size, chunkSize);
      if (chunkCount > CHUNK_COUNT_MAX) invalidArgument(`Lz4Store.pack: ${sourcePath} is too large for chunks of ${chunkSize} bytes`);
      const header: FileHeader = { formatVersion: 1, chunkSize, uncompressedSize: size, chunkCount };
      const piece = new Uint8Array(Math.max(chunkSize, Math.floor(COPY_BYTES / chunkSize) * chunkSize));
      await writeNewFile(targetPath, (out) => {
        out.append(encodeFileHeader(chunkSize, size));
        const index = new ChunkIndex(chunkCount);
        for (let pieceStart = 0; pieceStart < size; pieceStart += piece.length) {
          const bytes = piece.subarray(0, Math.min(piece.length, size - pieceStart));
          input.read(pieceStart, bytes);
          const records: Uint8Array[] = [];
          let recordOffset = out.position;
          for (let at = 0; at < bytes.length; at += chunkSize) {
            const chunkIndex = (pieceStart + at) / chunkSize;
            const record = encodeChunkRecord(header, chunkIndex, bytes.subarray(at, at + chunkSize));
            index.set(chunkIndex, recordOffset, decodeRecordHeader(record, recordOffset, targetPath));
            recordOffset += record.length;
            records.push(record);
          }
          out.append(Buffer.concat(records));
        }
        const indexOffset = out.position;
        const payload = index.encode();
        out.append(encodeRecordHeader(indexRecord(1, payload)));
        out.append(payload);
        out.writeAt(ROOT_SLOT_OFFSETS[0], encodeRootSlot({ sequence: 1, indexOffset, dataEnd: out.position }));
      });
    } finally {
      input.close();
    }
  }

  /** Writes the data a packed file holds to `target`, as a plain file (checked chunk by chunk). */
  static async unpack(source: string, target: string): Promise<void> {
    const store = await Lz4Store.open(localPath("Lz4Store.unpack source", source, undefined));
    try {
      let targetPath = localPath("Lz4Store.unpack target", target, undefined);
      if (targetPath === store.path) invalidArgument(`Lz4Store.unpack: source and target are the same file, ${targetPath}`);
      targetPath = newFileTarget("Lz4Store.unpack", targetPath, store.#file!.fd);
      const piece = new Uint8Array(Math.min(COPY_BYTES, Math.max(1, store.size)));
      await writeNewFile(targetPath, (out) => {
        for (let at = 0; at < store.size; at += piece.length) {
          const bytes = piece.subarray(0, Math.min(piece.length, store.size - at));
          store.read(at, bytes);
          out.append(bytes);
        }
      });
    } finally {
      store.close();
    }
  }

  /**
   * Rewrites a packed file with only its live chunks (each checked first), reclaiming the space
   * of superseded records and old indexes. Atomic: a new file renamed over the old one.
   */
  static async compact(location: string): Promise<{ byteLengthBefore: number; byteLengthAfter: number }> {
    const path = localPath("Lz4Store.compact", location, undefined);
    const lockPath = takeLock(path);
    try {
      const store = new Lz4Store({ path });
      await store.#load();
      try {
        const header = store.#header!;
        const byteLengthBefore = store.#file!.size;
        let byteLengthAfter = 0;
        await writeNewFile(path, async (out) => {
          out.append(encodeFileHeader(header.chunkSize, header.uncompressedSize));
          const index = new ChunkIndex(header.chunkCount);
          for (let chunkIndex = 0; chunkIndex < header.chunkCount; chunkIndex++) {
            const { record } = await store.#loadChunk(chunkIndex);
            index.set(chunkIndex, out.position, decodeRecordHeader(record, out.position, path));
            out.append(record);
          }
          const indexOffset = out.position;
          const payload = index.encode();
          out.append(encodeRecordHeader(indexRecord(1, payload)));
          out.append(payload);
          out.writeAt(ROOT_SLOT_OFFSETS[0], encodeRootSlot({ sequence: 1, indexOffset, dataEnd: out.position }));
          byteLengthAfter = out.position;
        });
        return { byteLengthBefore, byteLengthAfter };
      } finally {
        store.close();
      }
    } finally {
      unlinkSync(lockPath);
    }
  }

  /**
   * Settles when the S3 range's read-ahead fetches have; undefined if none are in flight (or the
   * file is local). A fill worker polls the engine instead of sleeping in it while this is
   * pending, so its event loop keeps those fetches going: other workers may be waiting for them.
   */
  pending(): Promise<void> | undefined {
    return this.#s3Range?.pending();
  }

  /** Worker instances read the file here (the store hook umap's workers await). */
  async open(): Promise<void> {
    if (!this.#header) await this.#load();
  }

  get size(): number {
    return this.#loaded().uncompressedSize;
  }

  get chunkSize(): number {
    return this.#loaded().chunkSize;
  }

  get label(): string {
    return `Lz4Store ${this.path}`;
  }

  describe(): StoreDescriptor {
    if (this.#s3Config) {
      // Pinned: workers skip HeadObject, read exactly the version opened, and share its chunk table.
      const pinned = this.#s3Range?.pinnedConfig() ?? this.#s3Config;
      return { module: Lz4Store.MODULE, options: { path: this.path, s3: pinned } satisfies Lz4Config };
    }
    if (!this.#file) {
      throw new UmapError(ErrorCode.UNSUPPORTED, `${this.label}: opened over a byte range, so workers cannot open it: use Lz4Store.open(path)`);
    }
    const config: Lz4Config = { path: this.path, writable: this.writable };
    if (this.writable) config.sessionStart = this.#sessionStart!;
    return { module: Lz4Store.MODULE, options: config };
  }

  read(byteOffset: number, target: Uint8Array): void | Promise<void> {
    const header = this.#loaded();
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || byteOffset + target.length > header.uncompressedSize) {
      invalidArgument(`${this.label}: read of [${byteOffset}, ${byteOffset + target.length}) is outside its ${header.uncompressedSize} bytes`);
    }
    if (target.length === 0) return;
    if (this.#appendFd >= 0) this.#catchUp();
    return this.#readFrom(Math.floor(byteOffset / header.chunkSize), byteOffset, target);
  }

  /**
   * Recompresses and appends the chunks the write covers. A chunk covered whole is simply
   * encoded. A chunk covered in part (a region whose pageSize is smaller than chunkSize) is a
   * read-modify-write, which two evictors writing different pages of one chunk could
   * interleave and so lose one page: it runs under that chunk's lock file, and re-reads the
   * chunk's latest record (any worker's) under the lock.
   */
  write(byteOffset: number, source: Uint8Array): void {
    const header = this.#loaded();
    if (!this.writable || this.#appendFd < 0) throw new UmapError(ErrorCode.UNSUPPORTED, `${this.label}: opened read-only`);
    const end = byteOffset + source.length;
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || end > header.uncompressedSize) {
      invalidArgument(`${this.label}: write of [${byteOffset}, ${end}) is outside its ${header.uncompressedSize} bytes`);
    }
    if (source.length === 0) return;
    const firstChunk = Math.floor(byteOffset / header.chunkSize);
    const lastChunk = Math.floor((end - 1) / header.chunkSize);
    const records: Uint8Array[] = [];
    for (let chunkIndex = firstChunk; chunkIndex <= lastChunk; chunkIndex++) {
      const chunkStart = chunkIndex * header.chunkSize;
      const chunkEnd = chunkStart + chunkByteLength(header, chunkIndex);
      if (byteOffset <= chunkStart && end >= chunkEnd) {
        records.push(encodeChunkRecord(header, chunkIndex, source.subarray(chunkStart - byteOffset, chunkEnd - byteOffset)));
      } else {
        this.#writePartChunk(chunkIndex, byteOffset, source);
      }
    }
    // Our own records are found by the scan like anyone else's: it keeps file order.
    if (records.length > 0) this.#appendAndScan(records.length === 1 ? records[0]! : Buffer.concat(records));
    else this.#catchUp();
  }

  /** Read-modify-write of one chunk under its lock file (see write()). */
  #writePartChunk(chunkIndex: number, byteOffset: number, source: Uint8Array): void {
    const header = this.#header!;
    const lockPath = `${this.path}${CHUNK_LOCK_INFIX}${chunkIndex}`;
    lockChunk(lockPath, this.label, chunkIndex);
    try {
      // Under the lock: every earlier write of this chunk, by any worker, is in the file.
      this.#catchUp();
      const index = this.#index!;
      const record = new Uint8Array(RECORD_HEADER_BYTES + index.storedByteLengths[chunkIndex]!);
      this.#file!.read(index.recordOffsets[chunkIndex]!, record);
      const bytes = this.#decodeChunk(chunkIndex, record).slice();
      const chunkStart = chunkIndex * header.chunkSize;
      const from = Math.max(chunkStart, byteOffset);
      const to = Math.min(chunkStart + bytes.length, byteOffset + source.length);
      bytes.set(source.subarray(from - byteOffset, to - byteOffset), from - chunkStart);
      this.#appendAndScan(encodeChunkRecord(header, chunkIndex, bytes));
    } finally {
      unlinkSync(lockPath);
    }
  }

  /**
   * The owner writes a new index of every chunk's latest record and switches the root to it
   * (see the file comment). Other instances have nothing to flush: their records are already
   * in the file, and the owner's scan finds them.
   */
  flush(): void {
    this.#loaded();
    if (!this.writable || !this.#owner) return;
    this.#catchUp();
    if (!this.#unflushed) return;
    const sequence = this.#root!.sequence + 1;
    const payload = this.#index!.encode();
    const record = indexRecord(sequence, payload);
    let indexOffset = -1;
    this.#appendAndScan(Buffer.concat([encodeRecordHeader(record), payload]), (at, found) => {
      if (found.chunkIndex === record.chunkIndex && found.contentHash === record.contentHash) indexOffset = at;
    });
    if (indexOffset < 0) throw new UmapError(ErrorCode.INTERNAL, `${this.label}: the index just appended was not found in the file`);
    fsyncSync(this.#appendFd);
    const root: RootSlot = { sequence, indexOffset, dataEnd: indexOffset + RECORD_HEADER_BYTES + payload.length };
    const slotIndex = 1 - this.#rootSlotIndex;
    const slot = encodeRootSlot(root);
    if (writeSync(this.#rootFd, slot, 0, slot.length, ROOT_SLOT_OFFSETS[slotIndex]) !== slot.length) {
      throw new UmapError(ErrorCode.STORE, `${this.label}: short write of the root slot`);
    }
    fsyncSync(this.#rootFd);
    this.#root = root;
    this.#rootSlotIndex = slotIndex;
    this.#unflushed = false;
  }

  /** Checks every chunk (reads, decompresses and hashes it); names each one that fails. */
  async verify(): Promise<Lz4Verification> {
    const header = this.#loaded();
    const badChunks: Lz4Verification["badChunks"] = [];
    for (let chunkIndex = 0; chunkIndex < header.chunkCount; chunkIndex++) {
      try {
        await this.#loadChunk(chunkIndex);
      } catch (error) {
        if (!(error instanceof UmapError)) throw error;
        badChunks.push({ chunkIndex, message: error.message });
      }
    }
    return { chunkCount: header.chunkCount, badChunks };
  }

  info(): Lz4Info {
    const header = this.#loaded();
    const index = this.#index!;
    let lz4ChunkCount = 0;
    for (let i = 0; i < header.chunkCount; i++) lz4ChunkCount += index.kinds[i] === RecordKind.LZ4 ? 1 : 0;
    const fileByteLength = this.#range!.size;
    const indexRecordBytes = RECORD_HEADER_BYTES + header.chunkCount * INDEX_ENTRY_BYTES;
    return {
      path: this.path,
      fileByteLength,
      uncompressedSize: header.uncompressedSize,
      chunkSize: header.chunkSize,
      chunkCount: header.chunkCount,
      lz4ChunkCount,
      rawChunkCount: header.chunkCount - lz4ChunkCount,
      supersededByteLength: Math.max(0, fileByteLength - FILE_HEADER_BYTES - index.liveByteLength() - indexRecordBytes),
      ratio: fileByteLength === 0 ? 0 : header.uncompressedSize / fileByteLength,
    };
  }

  /** The owner of a writable store flushes first; then descriptors and the lock are released. */
  close(): void | Promise<void> {
    if (this.#closed) return;
    let closing: void | Promise<void> = undefined;
    try {
      if (this.#header && this.writable && this.#owner) this.flush();
    } finally {
      this.#closed = true;
      for (const fd of [this.#appendFd, this.#rootFd]) if (fd >= 0) closeSync(fd);
      this.#appendFd = this.#rootFd = -1;
      if (this.#file) this.#file.close();
      // An S3 range stops its fetches before letting go of its chunk table: wait for that.
      else closing = this.#range?.close?.();
      this.#file = this.#range = this.#s3Range = undefined;
      if (this.#lockPath) unlinkSync(this.#lockPath);
      this.#lockPath = undefined;
      this.#cachedChunk = undefined;
    }
    return closing;
  }

  #loaded(): FileHeader {
    if (this.#closed) throw new UmapError(ErrorCode.CLOSED, `${this.label} is closed`);
    if (!this.#header) invalidArgument(`${this.label} is not open: use Lz4Store.open(location)`);
    return this.#header;
  }

  /** Reads and checks header, root and index; a writable owner also takes the lock and truncates. */
  async #load(): Promise<void> {
    if (this.#s3Config) {
      const opened = await S3Range.open(this.#s3Config, "Lz4Store");
      this.#s3Range = opened;
      const range = isMainThread ? settledReads(opened) : opened;
      this.#range = range;
      try {
        await this.#loadFrom(range);
      } catch (error) {
        await this.close();
        throw error;
      }
      return;
    }
    if (this.writable && this.#owner) this.#lockPath = takeLock(this.path);
    try {
      this.#file = new LocalFileRange(this.path);
      this.#range = this.#file;
      await this.#loadFrom(this.#range);
      if (!this.writable) return;
      if (this.#owner) {
        // What the last flush did not cover was never promised to anyone: drop it, so this
        // session's scan starts from a clean end.
        removeStaleChunkLocks(this.path);
        this.#rootFd = openSameFile(this.#file, fs.O_WRONLY, this.label);
        if (this.#file.size > this.#root!.dataEnd) ftruncateSync(this.#rootFd, this.#root!.dataEnd);
        this.#file.refreshSize();
      }
      this.#appendFd = openSameFile(this.#file, fs.O_WRONLY | fs.O_APPEND, this.label);
      this.#sessionStart ??= this.#root!.dataEnd;
      this.#scanPosition = this.#sessionStart;
      this.#catchUp();
      this.#unflushed = false;
    } catch (error) {
      this.close();
      throw error;
    }
  }

  async #loadFrom(range: ByteRange): Promise<void> {
    const label = this.label;
    const fileSize = range.size;
    const headerBytes = new Uint8Array(Math.min(FILE_HEADER_BYTES, fileSize));
    await range.read(0, headerBytes);
    const header = decodeFileHeader(headerBytes, fileSize, label);
    const { root, slotIndex } = chooseRoot(headerBytes, fileSize, label);
    const recordBytes = new Uint8Array(RECORD_HEADER_BYTES);
    await range.read(root.indexOffset, recordBytes);
    const record = decodeRecordHeader(recordBytes, root.indexOffset, label);
    if (record.kind !== RecordKind.INDEX) throw corrupt(label, `the root points at byte ${root.indexOffset}, which is not an index record`);
    if (root.indexOffset + RECORD_HEADER_BYTES + record.storedByteLength !== root.dataEnd) {
      throw corrupt(label, `the index at byte ${root.indexOffset} (${record.storedByteLength} bytes) does not end where its root says, at ${root.dataEnd}`);
    }
    if (record.storedByteLength !== header.chunkCount * INDEX_ENTRY_BYTES) {
      throw corrupt(label, `the index has ${record.storedByteLength} bytes, but ${header.chunkCount} chunks need ${header.chunkCount * INDEX_ENTRY_BYTES}`);
    }
    const payload = new Uint8Array(record.storedByteLength);
    await range.read(root.indexOffset + RECORD_HEADER_BYTES, payload);
    if (hash64(payload) !== record.contentHash) throw corrupt(label, `the index at byte ${root.indexOffset} fails its checksum`);
    this.#index = decodeIndex(header, payload, root.dataEnd, label);
    this.#header = header;
    this.#root = root;
    this.#rootSlotIndex = slotIndex;
  }

  /**
   * Applies the records appended since the last scan, in file order. Stops at a record still
   * being written (it is the last one: appends are serialized). `onIndex` sees index records.
   */
  #catchUp(onIndex?: (recordOffset: number, record: RecordHeader) => void): void {
    const file = this.#file!;
    const header = this.#header!;
    const fileSize = file.refreshSize();
    const headerBytes = new Uint8Array(RECORD_HEADER_BYTES);
    while (this.#scanPosition + RECORD_HEADER_BYTES <= fileSize) {
      const at = this.#scanPosition;
      file.read(at, headerBytes);
      const record = decodeRecordHeader(headerBytes, at, this.label);
      const end = at + RECORD_HEADER_BYTES + record.storedByteLength;
      if (end > fileSize) break;
      if (record.kind === RecordKind.INDEX) {
        onIndex?.(at, record);
      } else {
        checkChunkRecord(header, record, at, fileSize, this.label);
        this.#index!.set(record.chunkIndex, at, record);
        if (this.#cachedChunkIndex === record.chunkIndex) this.#dropCache();
        this.#unflushed = true;
      }
      this.#scanPosition = end;
    }
  }

  /**
   * Appends records, then scans up to them. Appends are serialized, so once ours is complete so
   * is every record before it, and a scan that stops short of its end (it began at or after
   * `sizeBefore`) has met a torn record: a short append that a full disk left in the file. The
   * scan can never pass it, so a write after it would never be read back: say so instead of
   * reporting success.
   */
  #appendAndScan(bytes: Uint8Array, onIndex?: (recordOffset: number, record: RecordHeader) => void): void {
    const sizeBefore = this.#file!.refreshSize();
    this.#append(bytes);
    this.#catchUp(onIndex);
    if (this.#scanPosition < sizeBefore + bytes.length) {
      throw new UmapError(
        ErrorCode.STORE,
        `${this.label}: the record at byte ${this.#scanPosition} is torn (an append cut short, as by a full disk), so nothing appended ` +
          `after it can be read back: this writing session cannot go on. Its last flush is intact: close the store and open it for ` +
          `writing again, which drops everything after that flush`,
      );
    }
  }

  #append(bytes: Uint8Array): void {
    // One write(2): O_APPEND places it atomically after every other append. A short write
    // (disk full) leaves a torn record, which every later scan reports as corrupt.
    let written: number;
    try {
      written = writeSync(this.#appendFd, bytes, 0, bytes.length, null);
    } catch (error) {
      throw new UmapError(ErrorCode.STORE, `${this.label}: appending ${bytes.length} bytes failed: ${describeError(error)}`, { cause: error });
    }
    if (written !== bytes.length) {
      throw new UmapError(ErrorCode.STORE, `${this.label}: short append (${written} of ${bytes.length} bytes): is the disk full?`);
    }
  }

  /** Fills target from chunk `chunkIndex` on, reading runs of adjacent records at once. */
  #readFrom(chunkIndex: number, byteOffset: number, target: Uint8Array): void | Promise<void> {
    const header = this.#header!;
    const index = this.#index!;
    const lastChunk = Math.floor((byteOffset + target.length - 1) / header.chunkSize);
    while (chunkIndex <= lastChunk) {
      if (chunkIndex === this.#cachedChunkIndex) {
        this.#copyChunk(chunkIndex, this.#cachedChunk!, byteOffset, target);
        chunkIndex++;
        continue;
      }
      // A span: this chunk's record and those that follow it directly in the file.
      const spanStart = index.recordOffsets[chunkIndex]!;
      let spanEnd = spanStart + RECORD_HEADER_BYTES + index.storedByteLengths[chunkIndex]!;
      let spanLast = chunkIndex;
      while (
        spanLast < lastChunk &&
        index.recordOffsets[spanLast + 1] === spanEnd &&
        spanLast + 1 !== this.#cachedChunkIndex &&
        spanEnd + RECORD_HEADER_BYTES + index.storedByteLengths[spanLast + 1]! - spanStart <= SPAN_BYTES_MAX
      ) {
        spanLast++;
        spanEnd += RECORD_HEADER_BYTES + index.storedByteLengths[spanLast]!;
      }
      // A local file is read synchronously into the reused scratch buffer; a range that may
      // answer later gets a buffer of its own, so no other read can reuse it meanwhile.
      let span: Uint8Array;
      if (this.#file) {
        if (this.#scratch.length < spanEnd - spanStart) this.#scratch = new Uint8Array(Math.max(spanEnd - spanStart, 2 * this.#scratch.length));
        span = this.#scratch.subarray(0, spanEnd - spanStart);
      } else {
        span = new Uint8Array(spanEnd - spanStart);
      }
      const first = chunkIndex;
      const pending = this.#range!.read(spanStart, span);
      if (pending) {
        return pending.then(() => {
          this.#decodeSpan(first, spanLast, spanStart, span, byteOffset, target);
          return this.#readFrom(spanLast + 1, byteOffset, target);
        });
      }
      this.#decodeSpan(first, spanLast, spanStart, span, byteOffset, target);
      chunkIndex = spanLast + 1;
    }
  }

  #decodeSpan(first: number, last: number, spanStart: number, span: Uint8Array, byteOffset: number, target: Uint8Array): void {
    const index = this.#index!;
    for (let chunkIndex = first; chunkIndex <= last; chunkIndex++) {
      const at = index.recordOffsets[chunkIndex]! - spanStart;
      const record = span.subarray(at, at + RECORD_HEADER_BYTES + index.storedByteLengths[chunkIndex]!);
      const bytes = this.#decodeChunk(chunkIndex, record);
      this.#copyChunk(chunkIndex, bytes, byteOffset, target);
      const chunkStart = chunkIndex * this.#header!.chunkSize;
      // Keep a chunk the read did not use whole: the next read likely wants the rest.
      if (chunkStart < byteOffset || chunkStart + bytes.length > byteOffset + target.length) {
        this.#cachedChunkIndex = chunkIndex;
        this.#cachedChunk = bytes.buffer === span.buffer ? bytes.slice() : bytes;
      }
    }
  }

  /** The uncompressed bytes of a chunk from its record bytes, checked against the index and its hash. */
  #decodeChunk(chunkIndex: number, record: Uint8Array): Uint8Array {
    const header = this.#header!;
    const index = this.#index!;
    const recordOffset = index.recordOffsets[chunkIndex]!;
    const expectedLength = chunkByteLength(header, chunkIndex);
    const chunkStart = chunkIndex * header.chunkSize;
    const where = `chunk ${chunkIndex} (bytes [${chunkStart}, ${chunkStart + expectedLength}), record at byte ${recordOffset})`;
    const found = decodeRecordHeader(record.subarray(0, RECORD_HEADER_BYTES), recordOffset, this.label);
    if (
      found.chunkIndex !== chunkIndex ||
      found.kind !== index.kinds[chunkIndex] ||
      found.storedByteLength !== index.storedByteLengths[chunkIndex] ||
      found.contentHash !== index.contentHashes[chunkIndex]
    ) {
      throw corrupt(this.label, `${where}: the index and the record there disagree`);
    }
    const payload = record.subarray(RECORD_HEADER_BYTES);
    let bytes: Uint8Array;
    if (found.kind === RecordKind.RAW) {
      bytes = payload;
    } else {
      // The length prefix decides how much lz4-napi allocates: check it before trusting it.
      const prefix = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
      if (prefix !== expectedLength) throw corrupt(this.label, `${where}: its LZ4 block claims ${prefix} bytes`);
      try {
        bytes = uncompressSync(Buffer.from(payload.buffer, payload.byteOffset, payload.length));
      } catch (error) {
        throw new UmapError(ErrorCode.CORRUPT, `${this.label}: ${where} fails to decompress: ${describeError(error)}`, { cause: error });
      }
      if (bytes.length !== expectedLength) throw corrupt(this.label, `${where} decompresses to ${bytes.length} bytes`);
    }
    if (hash64(bytes) !== found.contentHash) throw corrupt(this.label, `${where} fails its checksum: the stored data is corrupt`);
    return bytes;
  }

  /** Copies the part of a chunk's bytes that falls in [byteOffset, byteOffset + target.length). */
  #copyChunk(chunkIndex: number, bytes: Uint8Array, byteOffset: number, target: Uint8Array): void {
    const chunkStart = chunkIndex * this.#header!.chunkSize;
    const from = Math.max(chunkStart, byteOffset);
    const to = Math.min(chunkStart + bytes.length, byteOffset + target.length);
    target.set(bytes.subarray(from - chunkStart, to - chunkStart), from - byteOffset);
  }

  /** A chunk's record (header and payload) and its checked uncompressed bytes. */
  async #loadChunk(chunkIndex: number): Promise<{ record: Uint8Array; bytes: Uint8Array }> {
    const index = this.#index!;
    const record = new Uint8Array(RECORD_HEADER_BYTES + index.storedByteLengths[chunkIndex]!);
    await this.#range!.read(index.recordOffsets[chunkIndex]!, record);
    return { record, bytes: this.#decodeChunk(chunkIndex, record) };
  }

  #dropCache(): void {
    this.#cachedChunkIndex = -1;
    this.#cachedChunk = undefined;
  }
}

export { Lz4Store };

/** Takes a chunk's lock file, waiting (with a growing pause, up to a timeout) while another worker holds it. */
function lockChunk(lockPath: string, label: string, chunkIndex: number): void {
  const deadline = Date.now() + CHUNK_LOCK_TIMEOUT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      closeSync(openSync(lockPath, fs.O_WRONLY | fs.O_CREAT | fs.O_EXCL, 0o644));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new UmapError(ErrorCode.STORE, `${label}: cannot create the lock ${lockPath} of chunk ${chunkIndex}: ${describeError(error)}`, { cause: error });
      }
    }
    if (Date.now() > deadline) {
      throw new UmapError(ErrorCode.STORE, `${label}: chunk ${chunkIndex} stayed locked for ${CHUNK_LOCK_TIMEOUT_MS} ms (${lockPath})`);
    }
    Atomics.wait(sleepCell, 0, 0, Math.min(1, 0.02 * 2 ** attempt));
  }
}

/** Removes chunk locks a crashed writer left behind; only the holder of the file's lock may. */
function removeStaleChunkLocks(path: string): void {
  const prefix = `${basename(path)}${CHUNK_LOCK_INFIX}`;
  for (const name of readdirSync(dirname(path))) {
    if (name.startsWith(prefix) && /^\d+$/.test(name.slice(prefix.length))) unlinkSync(join(dirname(path), name));
  }
}

function indexRecord(sequence: number, payload: Uint8Array): RecordHeader {
  return {
    kind: RecordKind.INDEX,
    // Names the flush it belongs to, so flush() can find where its append landed.
    chunkIndex: sequence % 2 ** 32,
    storedByteLength: payload.length,
    contentHash: hash64(payload),
    uncompressedByteLength: 0,
  };
}

/** One chunk as a record: LZ4 where that is smaller, else raw. */
function encodeChunkRecord(header: FileHeader, chunkIndex: number, bytes: Uint8Array): Uint8Array {
  const contentHash = hash64(bytes);
  const compressed = compressSync(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
  const kind = compressed.length < bytes.length ? RecordKind.LZ4 : RecordKind.RAW;
  const payload = kind === RecordKind.LZ4 ? compressed : bytes;
  const record = new Uint8Array(RECORD_HEADER_BYTES + payload.length);
  writeRecordHeader(record, { kind, chunkIndex, storedByteLength: payload.length, contentHash, uncompressedByteLength: bytes.length });
  record.set(payload, RECORD_HEADER_BYTES);
  if (bytes.length !== chunkByteLength(header, chunkIndex)) throw new UmapError(ErrorCode.INTERNAL, `chunk ${chunkIndex} has ${bytes.length} bytes`);
  return record;
}

/** Accepts only plain-object options with known keys, naming anything else. */
function checkOptions(what: string, options: unknown, known: string[]): void {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    invalidArgument(`${what}: options must be an object, got ${describeValue(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) invalidArgument(`${what}: unknown option ${JSON.stringify(key)} (known: ${known.join(", ")})`);
  }
}

/**
 * A local path from a location. S3 locations reach here only where S3 is not supported (unpack,
 * compact: they rewrite a file in place or read one whole); the s3 option belongs to s3:// ones.
 */
function localPath(what: string, location: unknown, s3: unknown): string {
  if (typeof location !== "string" || location.length === 0) {
    invalidArgument(`${what}: location must be a non-empty path, got ${describeValue(location)}`);
  }
  // Case-insensitive, as URL schemes are (and as ShardedStore reads them): "S3://b/k" is S3 too.
  if (isS3Location(location)) {
    throw new UmapError(ErrorCode.UNSUPPORTED, `${what} ${location}: this operation works on local files only; Lz4Store.open and Lz4Store.pack take s3:// locations`);
  }
  if (s3 !== undefined) invalidArgument(`${what} ${location}: option s3 is for s3://bucket/key locations, not a local file`);
  return resolve(location);
}

/** Takes `<path>.lock` for a writer, taking over a lock whose process is gone. Returns the lock's path. */
function takeLock(path: string): string {
  // The file must exist and be a packed file's candidate before a lock is made beside it.
  closeSync(openRegularFile(path, false, "packed file"));
  const lockPath = `${path}.lock`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(lockPath, String(process.pid), { flag: "wx" });
      return lockPath;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new UmapError(ErrorCode.STORE, `${path}: cannot create its lock file ${lockPath}: ${describeError(error)}`, { cause: error });
      }
    }
    const holder = Number.parseInt(readLockText(path, lockPath), 10);
    if (Number.isSafeInteger(holder) && holder > 0 && processAlive(holder)) {
      throw new UmapError(
        ErrorCode.STORE,
        `${path} is open for writing by process ${holder}${holder === process.pid ? " (this one)" : ""}: its lock file ${lockPath} exists`,
      );
    }
    // The holder is gone (it crashed): its lock is stale.
    try {
      unlinkSync(lockPath);
    } catch {
      // Someone else removed it first; try again.
    }
  }
  throw new UmapError(ErrorCode.STORE, `${path}: another writer keeps taking its lock file ${lockPath}`);
}

/**
 * Opens the file `file` has open once more, for writing. The path is opened again, so it is
 * checked to still name that file: a FIFO or another file put in its place meanwhile (a
 * compaction renamed over it) would otherwise block the open or take writes meant for the first.
 */
function openSameFile(file: LocalFileRange, flags: number, label: string): number {
  let fd: number;
  try {
    fd = openSync(file.path, flags | fs.O_NONBLOCK);
  } catch (error) {
    throw new UmapError(ErrorCode.STORE, `${label}: cannot open ${file.path} for writing: ${describeError(error)}`, { cause: error });
  }
  const opened = fstatSync(fd);
  const first = fstatSync(file.fd);
  if (opened.dev !== first.dev || opened.ino !== first.ino) {
    closeSync(fd);
    throw new UmapError(ErrorCode.STORE, `${label}: ${file.path} was replaced by another file while it was being opened`);
  }
  return fd;
}

/** Bytes of a lock file read at most: it holds a pid. */
const LOCK_TEXT_BYTES_MAX = 64;

/**
 * The text of an existing lock file, "" if it vanished. Something else in the lock's place (a
 * FIFO, a link to a device) is an error: reading it could block forever or never end.
 */
function readLockText(path: string, lockPath: string): string {
  let fd: number;
  try {
    fd = openSync(lockPath, fs.O_RDONLY | fs.O_NOFOLLOW | fs.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return "";
    throw new UmapError(ErrorCode.STORE, `${path}: cannot read its lock file ${lockPath}: ${describeError(error)}`, { cause: error });
  }
  try {
    if (!fstatSync(fd).isFile()) throw new UmapError(ErrorCode.STORE, `${path}: its lock file ${lockPath} is not a regular file`);
    const bytes = new Uint8Array(LOCK_TEXT_BYTES_MAX);
    const length = readSync(fd, bytes, 0, bytes.length, 0);
    return new TextDecoder().decode(bytes.subarray(0, length));
  } finally {
    closeSync(fd);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Where a new file for `path` goes: `path` itself, or the file a link there names (written as
 * `cp` writes through a link, rather than replacing the link). The new file is renamed over
 * it, so anything there but a regular file is refused: renaming over /dev/null or a FIFO would
 * replace the device node itself. The source (open as `sourceFd`) is refused as a target under
 * any name, since renaming over it would lose the data being packed.
 */
function newFileTarget(what: string, path: string, sourceFd: number): string {
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // Not there yet (or a dangling link, which the new file replaces): what we want.
    if (code === "ENOENT") return path;
    throw new UmapError(ErrorCode.STORE, `${what}: cannot look at the target ${path}: ${describeError(error)}`, { cause: error });
  }
  if (stat.isDirectory()) invalidArgument(`${what}: the target ${path} is a directory`);
  if (!stat.isFile()) {
    invalidArgument(`${what}: the target ${path} is not a regular file (a device, FIFO or socket); the result is written to a new file renamed into place, so give a file path`);
  }
  const source = fstatSync(sourceFd);
  if (stat.dev === source.dev && stat.ino === source.ino) invalidArgument(`${what}: the target ${path} is the source file under another name`);
  return realpathSync(path);
}

interface NewFile {
  readonly position: number;
  append(bytes: Uint8Array): void;
  writeAt(byteOffset: number, bytes: Uint8Array): void;
}

/** Writes a file under a temporary name beside `path`, fsyncs it and renames it into place. */
async function writeNewFile(path: string, produce: (out: NewFile) => void | Promise<void>): Promise<void> {
  try {
    if (statSync(path).isDirectory()) invalidArgument(`${path} is a directory`);
  } catch (error) {
    if (error instanceof UmapError) throw error;
    // Not there yet: what we want.
  }
  const temporary = resolve(dirname(path), `.${path.split("/").pop()}.${process.pid}.${Date.now()}.tmp`);
  let fd: number;
  try {
    fd = openSync(temporary, fs.O_WRONLY | fs.O_CREAT | fs.O_EXCL, 0o644);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new UmapError(code === "ENOENT" ? ErrorCode.NOT_FOUND : ErrorCode.STORE, `cannot create ${path}: ${describeError(error)}`, { cause: error });
  }
  let position = 0;
  const out: NewFile = {
    get position() {
      return position;
    },
    append(bytes) {
      let done = 0;
      while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
      position += bytes.length;
    },
    writeAt(byteOffset, bytes) {
      let done = 0;
      while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, byteOffset + done);
    },
  };
  try {
    await produce(out);
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(temporary, path);
  } catch (error) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkSync(temporary);
    } catch {
      // Already gone.
    }
    if (error instanceof UmapError) throw error;
    throw new UmapError(ErrorCode.STORE, `writing ${path} failed: ${describeError(error)}`, { cause: error });
  }
}

/**
 * An S3 range for the main thread: each read also waits for the read-ahead fetches it started.
 * Fill workers share the range's chunk table and wait for a chunk another thread is fetching; a
 * fetch the main thread left in flight would make no progress while the main thread is parked in
 * a page fault, and the workers would wait for it (up to the request and retry time limits).
 */
function settledReads(range: S3Range): ByteRange {
  return {
    get size() {
      return range.size;
    },
    label: range.label,
    async read(byteOffset: number, target: Uint8Array): Promise<void> {
      try {
        await range.read(byteOffset, target);
      } finally {
        await range.pending();
      }
    },
    close: () => range.close(),
  };
}

function s3WritableError(location: string): UmapError {
  return new UmapError(
    ErrorCode.UNSUPPORTED,
    `Lz4Store ${location}: a packed file on S3 opens read-only: writing appends records to the file, and an S3 object can only be replaced whole ` +
      "(pack a local file, write it there, and upload it with Lz4Store.pack or unpack and repack)",
  );
}

/** The `s3` option: an object of S3 options (checked in full by S3Range.open). */
function checkS3Option(what: string, location: string, s3: unknown): S3Options {
  if (s3 === undefined) return {};
  if (typeof s3 !== "object" || s3 === null || Array.isArray(s3)) invalidArgument(`${what} ${location}: option s3 must be an object of S3 options, got ${describeValue(s3)}`);
  const plain = { ...(s3 as S3Options) };
  for (const name of ["bucket", "key", "size", "etag", "sharedChunks"]) {
    if (name in plain) invalidArgument(`${what} ${location}: option s3.${name} is not an S3 option (the location names the object)`);
  }
  return plain;
}

/**
 * Packs a local file into a temporary local packed file, then uploads it with one PutObject. An
 * S3 PUT replaces an object whole, so readers see the old object or the new one, never a part;
 * a failed pack or upload leaves the target as it was.
 */
async function packToS3(source: string, target: string, options: Lz4PackOptions): Promise<void> {
  const { bucket, key } = parseS3Location(target);
  const s3 = checkS3Option("Lz4Store.pack", target, options.s3);
  const config = resolveS3Config({ ...s3, bucket, key }, `Lz4Store.pack target ${target}`);
  const sourcePath = localPath("Lz4Store.pack source", source, undefined);
  const scratch = mkdtempSync(join(tmpdir(), "bun-umap-pack-"));
  const packedPath = join(scratch, "packed.lz4");
  try {
    await Lz4Store.pack(sourcePath, packedPath, options.chunkSize === undefined ? {} : { chunkSize: options.chunkSize });
    const byteLength = statSync(packedPath).size;
    if (byteLength > S3_PUT_BYTES_MAX) {
      throw new UmapError(ErrorCode.UNSUPPORTED, `Lz4Store.pack target ${target}: the packed file is ${byteLength} bytes, over the ${S3_PUT_BYTES_MAX} pack uploads with one PutObject (multipart upload is not implemented)`);
    }
    const objects = new S3Objects(config);
    try {
      await objects.putFile(key, packedPath);
    } finally {
      objects.close();
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
