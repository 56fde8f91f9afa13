/**
 * The packed LZ4 format (README, "Packed LZ4 format"): encoding and checked decoding of its
 * three structures. Every decoder checks every field against the file's size before anything
 * uses it, and reports a problem as ERR_UMAP_CORRUPT naming the file and what is wrong.
 *
 *   [file header 128 B: magic, version, chunk size, uncompressed size, two root slots]
 *   [record][record]...        every record: a 32-byte header, then its payload
 *
 * A record is a chunk (raw or LZ4) or an index (one entry per chunk). A root slot points at the
 * index that is current; the slot with the higher sequence whose check passes wins, so
 * rewriting the other slot is the atomic step of a flush.
 */
import { ErrorCode, UmapError } from "../../src/errors.ts";

/** "BUNUMLZ4" */
export const FILE_MAGIC = new Uint8Array([0x42, 0x55, 0x4e, 0x55, 0x4d, 0x4c, 0x5a, 0x34]);
export const FORMAT_VERSION = 1;
export const FILE_HEADER_BYTES = 128;
export const ROOT_SLOT_OFFSETS = [32, 64] as const;
export const ROOT_SLOT_BYTES = 32;
export const RECORD_HEADER_BYTES = 32;
/** "L4RC" little-endian: the first word of every record. */
export const RECORD_MAGIC = 0x4352344c;
export const INDEX_ENTRY_BYTES = 24;

export const RecordKind = { RAW: 1, LZ4: 2, INDEX: 3 } as const;

export const CHUNK_SIZE_MIN = 4096;
export const CHUNK_SIZE_MAX = 16 * 1024 * 1024;
export const CHUNK_SIZE_DEFAULT = 64 * 1024;
/** The index record's length is 32-bit: at most this many 24-byte entries. */
export const CHUNK_COUNT_MAX = Math.floor(0xffffffff / 24);

export interface FileHeader {
  formatVersion: number;
  chunkSize: number;
  uncompressedSize: number;
  chunkCount: number;
}

export interface RootSlot {
  sequence: number;
  /** Byte offset of the index record's header. */
  indexOffset: number;
  /** File length the root covers: the end of its index record. */
  dataEnd: number;
}

export interface RecordHeader {
  kind: number;
  /** The chunk's index (chunks) or the root sequence it was written for (index records). */
  chunkIndex: number;
  storedByteLength: number;
  /** xxHash3-64 of the chunk's uncompressed bytes, or of the index payload. */
  contentHash: bigint;
  uncompressedByteLength: number;
}

export function corrupt(label: string, message: string): UmapError {
  return new UmapError(ErrorCode.CORRUPT, `${label}: ${message}`);
}

export function hash64(bytes: Uint8Array): bigint {
  return BigInt.asUintN(64, BigInt(Bun.hash.xxHash3(bytes)));
}

function crc32(bytes: Uint8Array): number {
  return Bun.hash.crc32(bytes) >>> 0;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A u64 field as a number, or a corruption report if it cannot be a byte count here. */
function safeU64(data: DataView, at: number, label: string, field: string): number {
  const value = data.getBigUint64(at, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(label, `${field} ${value} is out of range`);
  return Number(value);
}

export function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && 2 ** Math.round(Math.log2(value)) === value;
}

export function chunkCountOf(uncompressedSize: number, chunkSize: number): number {
  return Math.ceil(uncompressedSize / chunkSize);
}

/** Bytes of chunk `chunkIndex` before compression (the last one may be short). */
export function chunkByteLength(header: FileHeader, chunkIndex: number): number {
  return Math.min(header.chunkSize, header.uncompressedSize - chunkIndex * header.chunkSize);
}

export function encodeFileHeader(chunkSize: number, uncompressedSize: number): Uint8Array {
  const bytes = new Uint8Array(FILE_HEADER_BYTES);
  const data = view(bytes);
  bytes.set(FILE_MAGIC, 0);
  data.setUint32(8, FORMAT_VERSION, true);
  data.setUint32(12, chunkSize, true);
  data.setBigUint64(16, BigInt(uncompressedSize), true);
  data.setUint32(24, crc32(bytes.subarray(0, 24)), true);
  return bytes;
}

export function decodeFileHeader(bytes: Uint8Array, fileSize: number, label: string): FileHeader {
  if (fileSize < FILE_HEADER_BYTES || bytes.length < FILE_HEADER_BYTES) {
    throw corrupt(label, `truncated: ${fileSize} bytes, shorter than the ${FILE_HEADER_BYTES}-byte header of a packed LZ4 file`);
  }
  for (let i = 0; i < FILE_MAGIC.length; i++) {
    if (bytes[i] !== FILE_MAGIC[i]) throw corrupt(label, "wrong magic: not a packed LZ4 file (bun-umap pack makes one)");
  }
  const data = view(bytes);
  const formatVersion = data.getUint32(8, true);
  if (formatVersion !== FORMAT_VERSION) {
    throw corrupt(label, `format version ${formatVersion}, but this version of bun-umap reads version ${FORMAT_VERSION}`);
  }
  if (data.getUint32(24, true) !== crc32(bytes.subarray(0, 24))) throw corrupt(label, "the file header fails its checksum");
  const chunkSize = data.getUint32(12, true);
  if (!isPowerOfTwo(chunkSize) || chunkSize < CHUNK_SIZE_MIN || chunkSize > CHUNK_SIZE_MAX) {
    throw corrupt(label, `chunk size ${chunkSize} is not a power of two from ${CHUNK_SIZE_MIN} to ${CHUNK_SIZE_MAX}`);
  }
  const uncompressedSize = safeU64(data, 16, label, "uncompressed size");
  const chunkCount = chunkCountOf(uncompressedSize, chunkSize);
  if (chunkCount > CHUNK_COUNT_MAX) throw corrupt(label, `uncompressed size ${uncompressedSize} needs more than ${CHUNK_COUNT_MAX} chunks`);
  return { formatVersion, chunkSize, uncompressedSize, chunkCount };
}

export function encodeRootSlot(root: RootSlot): Uint8Array {
  const bytes = new Uint8Array(ROOT_SLOT_BYTES);
  const data = view(bytes);
  data.setBigUint64(0, BigInt(root.sequence), true);
  data.setBigUint64(8, BigInt(root.indexOffset), true);
  data.setBigUint64(16, BigInt(root.dataEnd), true);
  data.setUint32(28, crc32(bytes.subarray(0, 28)), true);
  return bytes;
}

/**
 * The root slot at `bytes` if its check passes and it is in use, else null (a slot never
 * written, or torn by a crash mid-write: the other slot then holds the last flushed state).
 * Offsets are checked against the file by chooseRoot().
 */
export function decodeRootSlot(bytes: Uint8Array): RootSlot | null {
  const data = view(bytes);
  if (data.getUint32(28, true) !== crc32(bytes.subarray(0, 28))) return null;
  const sequence = data.getBigUint64(0, true);
  const indexOffset = data.getBigUint64(8, true);
  const dataEnd = data.getBigUint64(16, true);
  const limit = BigInt(Number.MAX_SAFE_INTEGER);
  if (sequence === 0n || sequence > limit || indexOffset > limit || dataEnd > limit) return null;
  return { sequence: Number(sequence), indexOffset: Number(indexOffset), dataEnd: Number(dataEnd) };
}

/** The current root of a file: the valid slot with the higher sequence, checked against the file size. */
export function chooseRoot(headerBytes: Uint8Array, fileSize: number, label: string): { root: RootSlot; slotIndex: number } {
  const slots = ROOT_SLOT_OFFSETS.map((at) => decodeRootSlot(headerBytes.subarray(at, at + ROOT_SLOT_BYTES)));
  let slotIndex = -1;
  slots.forEach((slot, i) => {
    if (slot && (slotIndex < 0 || slot.sequence > slots[slotIndex]!.sequence)) slotIndex = i;
  });
  if (slotIndex < 0) throw corrupt(label, "neither root slot of the header is valid: the index cannot be found");
  const root = slots[slotIndex]!;
  if (root.dataEnd > fileSize) {
    throw corrupt(label, `truncated: the index ends at byte ${root.dataEnd}, but the file has ${fileSize} bytes`);
  }
  if (root.indexOffset < FILE_HEADER_BYTES || root.indexOffset + RECORD_HEADER_BYTES > root.dataEnd) {
    throw corrupt(label, `the root points at an index at byte ${root.indexOffset}, outside [${FILE_HEADER_BYTES}, ${root.dataEnd})`);
  }
  return { root, slotIndex };
}

export function encodeRecordHeader(record: RecordHeader): Uint8Array {
  const bytes = new Uint8Array(RECORD_HEADER_BYTES);
  writeRecordHeader(bytes, record);
  return bytes;
}

export function writeRecordHeader(bytes: Uint8Array, record: RecordHeader): void {
  const data = view(bytes);
  data.setUint32(0, RECORD_MAGIC, true);
  data.setUint32(4, record.kind, true);
  data.setUint32(8, record.chunkIndex, true);
  data.setUint32(12, record.storedByteLength, true);
  data.setBigUint64(16, record.contentHash, true);
  data.setUint32(24, record.uncompressedByteLength, true);
  data.setUint32(28, crc32(bytes.subarray(0, 28)), true);
}

/** A record header, checked on its own (magic, kind, its checksum); `at` names it in messages. */
export function decodeRecordHeader(bytes: Uint8Array, at: number, label: string): RecordHeader {
  const data = view(bytes);
  if (data.getUint32(0, true) !== RECORD_MAGIC) throw corrupt(label, `no record header at byte ${at} (wrong record magic)`);
  if (data.getUint32(28, true) !== crc32(bytes.subarray(0, 28))) throw corrupt(label, `the record header at byte ${at} fails its checksum`);
  const kind = data.getUint32(4, true);
  if (kind !== RecordKind.RAW && kind !== RecordKind.LZ4 && kind !== RecordKind.INDEX) {
    throw corrupt(label, `the record at byte ${at} has unknown kind ${kind}`);
  }
  return {
    kind,
    chunkIndex: data.getUint32(8, true),
    storedByteLength: data.getUint32(12, true),
    contentHash: data.getBigUint64(16, true),
    uncompressedByteLength: data.getUint32(24, true),
  };
}

/** Where each chunk's current record is, in typed arrays (a chunk index selects one of each). */
export class ChunkIndex {
  readonly recordOffsets: Float64Array;
  readonly storedByteLengths: Uint32Array;
  readonly kinds: Uint8Array;
  readonly contentHashes: BigUint64Array;

  constructor(readonly chunkCount: number) {
    this.recordOffsets = new Float64Array(chunkCount);
    this.storedByteLengths = new Uint32Array(chunkCount);
    this.kinds = new Uint8Array(chunkCount);
    this.contentHashes = new BigUint64Array(chunkCount);
  }

  set(chunkIndex: number, recordOffset: number, record: RecordHeader): void {
    this.recordOffsets[chunkIndex] = recordOffset;
    this.storedByteLengths[chunkIndex] = record.storedByteLength;
    this.kinds[chunkIndex] = record.kind;
    this.contentHashes[chunkIndex] = record.contentHash;
  }

  encode(): Uint8Array {
    const bytes = new Uint8Array(this.chunkCount * INDEX_ENTRY_BYTES);
    const data = view(bytes);
    for (let i = 0; i < this.chunkCount; i++) {
      const at = i * INDEX_ENTRY_BYTES;
      data.setBigUint64(at, BigInt(this.recordOffsets[i]!), true);
      data.setUint32(at + 8, this.storedByteLengths[i]!, true);
      data.setUint32(at + 12, this.kinds[i]!, true);
      data.setBigUint64(at + 16, this.contentHashes[i]!, true);
    }
    return bytes;
  }

  /** Bytes of live chunk records, headers included. */
  liveByteLength(): number {
    let total = 0;
    for (let i = 0; i < this.chunkCount; i++) total += RECORD_HEADER_BYTES + this.storedByteLengths[i]!;
    return total;
  }
}

/**
 * Checks that a chunk record fits the file header: its index, kind and lengths. `end` is the
 * last byte a record may reach (the root's dataEnd, or the file size when scanning).
 */
export function checkChunkRecord(header: FileHeader, record: RecordHeader, recordOffset: number, end: number, label: string): void {
  const where = `chunk ${record.chunkIndex} (record at byte ${recordOffset})`;
  if (record.chunkIndex >= header.chunkCount) {
    throw corrupt(label, `the record at byte ${recordOffset} names chunk ${record.chunkIndex}, but there are ${header.chunkCount}`);
  }
  const expected = chunkByteLength(header, record.chunkIndex);
  if (record.kind !== RecordKind.RAW && record.kind !== RecordKind.LZ4) throw corrupt(label, `${where} is not a chunk record`);
  if (record.uncompressedByteLength !== expected) {
    throw corrupt(label, `${where} holds ${record.uncompressedByteLength} bytes, but the chunk has ${expected}`);
  }
  // LZ4 is stored only when it is smaller than the raw bytes, so its length is bounded by them.
  const lengthOk =
    record.kind === RecordKind.RAW ? record.storedByteLength === expected : record.storedByteLength > 4 && record.storedByteLength < expected;
  if (!lengthOk) throw corrupt(label, `${where} has an impossible stored length ${record.storedByteLength} for ${expected} bytes`);
  if (recordOffset < FILE_HEADER_BYTES || recordOffset + RECORD_HEADER_BYTES + record.storedByteLength > end) {
    throw corrupt(label, `${where} reaches past byte ${end}, the end of the data (truncated file or bad index)`);
  }
}

/** Decodes and checks an index payload into a ChunkIndex; every entry is checked against the file. */
export function decodeIndex(header: FileHeader, payload: Uint8Array, dataEnd: number, label: string): ChunkIndex {
  if (payload.length !== header.chunkCount * INDEX_ENTRY_BYTES) {
    throw corrupt(label, `the index holds ${payload.length} bytes, but ${header.chunkCount} chunks need ${header.chunkCount * INDEX_ENTRY_BYTES}`);
  }
  const data = view(payload);
  const index = new ChunkIndex(header.chunkCount);
  for (let i = 0; i < header.chunkCount; i++) {
    const at = i * INDEX_ENTRY_BYTES;
    const recordOffset = safeU64(data, at, label, `index entry ${i}: offset`);
    const record: RecordHeader = {
      kind: data.getUint32(at + 12, true),
      chunkIndex: i,
      storedByteLength: data.getUint32(at + 8, true),
      contentHash: data.getBigUint64(at + 16, true),
      uncompressedByteLength: chunkByteLength(header, i),
    };
    checkChunkRecord(header, record, recordOffset, dataEnd, label);
    index.set(i, recordOffset, record);
  }
  return index;
}
