/**
 * A chunk cache shared by every thread that reads one remote object: the fill workers of a
 * region each build their own store instance, and without sharing each would fetch the same
 * chunks (measured: 2.3x the object's bytes with two fillers). The table lives in native memory
 * (libc calloc) that the main thread's instance allocates; its address travels to the workers in
 * the store's descriptor, like a FileStore's shared descriptor. Each instance holds a reference;
 * the last to let go frees the chunk buffers, so a worker still finishing a fetch never writes
 * freed memory. The small header stays allocated (see create()).
 *
 * Layout: a header of 32-bit words with a pthread mutex in it, then slotCount records of
 * SLOT_WORDS words, then slotCount chunk buffers of chunkSize bytes. Every read and change of the
 * header or a record happens with the mutex held (critical sections are a few loads and stores,
 * never an await). Not a spin lock on Atomics: the memory is an ordinary ArrayBuffer to
 * JavaScript, which may compile Atomics on such memory as plain accesses and keep a spinning
 * load in a register (measured: a spinner that never saw the lock released). The mutex calls are
 * opaque native calls, which are full barriers and after which the JIT reloads memory. The bytes
 * of a slot are written only by the thread that claimed it (state FETCHING) and read only while
 * pinned (pins > 0), so a slot is never reused under a reader.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";

// glibc 2.34 and later have the pthread functions in libc itself.
const libc = dlopen("libc.so.6", {
  calloc: { args: [FFIType.u64, FFIType.u64], returns: FFIType.u64 },
  free: { args: [FFIType.u64], returns: FFIType.void },
  pthread_mutex_init: { args: [FFIType.u64, FFIType.u64], returns: FFIType.i32 },
  pthread_mutex_lock: { args: [FFIType.u64], returns: FFIType.i32 },
  pthread_mutex_unlock: { args: [FFIType.u64], returns: FFIType.i32 },
});

const enum Header {
  REFS = 1,
  SLOT_COUNT = 2,
  CLOCK = 3,
  CHUNK_SIZE_PAGES = 4,
  /** A hash of what the table caches (an object's version), checked when a thread attaches. */
  IDENTITY = 5,
  DATA_LOW = 6,
  DATA_HIGH = 7,
  /** The pthread_mutex_t (40 bytes on Linux x86-64, 48 on arm64; room for 64). */
  MUTEX = 16,
  WORDS = 32,
}
const enum Field {
  STATE = 0,
  CHUNK_INDEX = 1,
  BYTE_LENGTH = 2,
  DELIVERED_BYTES = 3,
  PINS = 4,
  LAST_USE = 5,
  SLOT_WORDS = 8,
}
const enum State {
  FREE = 0,
  FETCHING = 1,
  READY = 2,
}
const PAGE_BYTES = 4096;
export const SHARED_SLOTS_MAX = 256;

/** What lookup() found for a chunk. */
export type Lookup =
  /** The chunk's bytes are in this slot, pinned for the caller: read, then call delivered(). */
  | { kind: "ready"; slot: number; bytes: Uint8Array }
  /** Another thread is fetching it: poll again. */
  | { kind: "fetching" }
  /** The caller claimed this slot: fetch into bytes, then call fetched() or failed(). */
  | { kind: "claimed"; slot: number; bytes: Uint8Array }
  /** No slot is free: fetch privately. */
  | { kind: "full" };

export class SharedChunks {
  /** The header's address: what other threads attach to. */
  readonly address: number;
  readonly slotCount: number;
  readonly chunkSize: number;
  readonly #words: Int32Array;
  /** The chunk buffers (a separate allocation, freed by the last thread to detach). */
  readonly #data: ArrayBuffer;
  readonly #dataAddress: number;
  #attached = true;

  private constructor(address: number, words: Int32Array, dataAddress: number) {
    this.address = address;
    this.#words = words;
    this.slotCount = words[Header.SLOT_COUNT]!;
    this.chunkSize = words[Header.CHUNK_SIZE_PAGES]! * PAGE_BYTES;
    this.#dataAddress = dataAddress;
    this.#data = toArrayBuffer(dataAddress as unknown as Pointer, 0, this.slotCount * this.chunkSize);
  }

  static #headerBytes(slotCount: number): number {
    return (Header.WORDS + slotCount * Field.SLOT_WORDS) * 4;
  }

  static #headerWords(address: number): Int32Array {
    const first = new Int32Array(toArrayBuffer(address as unknown as Pointer, 0, Header.WORDS * 4));
    return new Int32Array(toArrayBuffer(address as unknown as Pointer, 0, SharedChunks.#headerBytes(first[Header.SLOT_COUNT]!)));
  }

  /**
   * Allocates a table of slotCount chunks of chunkSize bytes (a multiple of 4096), holding one
   * reference. Returns undefined if the memory cannot be had. Untouched chunks cost no memory:
   * calloc of this size maps fresh zero pages.
   *
   * The header (slot records and mutex, at most 9 KiB) is never freed, so a thread given the
   * address of a table whose last holder has already let go can still look and find it gone
   * (see attach), rather than reading freed memory. Only the chunk buffers are freed.
   */
  static create(slotCount: number, chunkSize: number, identity: number): SharedChunks | undefined {
    if (!(slotCount >= 1 && slotCount <= SHARED_SLOTS_MAX) || chunkSize % PAGE_BYTES !== 0) {
      throw new Error(`SharedChunks.create: bad geometry ${slotCount} x ${chunkSize}`);
    }
    const address = Number(libc.symbols.calloc(1, SharedChunks.#headerBytes(slotCount)));
    if (!address) return undefined;
    const dataAddress = Number(libc.symbols.calloc(1, slotCount * chunkSize));
    if (!dataAddress || libc.symbols.pthread_mutex_init(address + Header.MUTEX * 4, 0) !== 0) {
      if (dataAddress) libc.symbols.free(dataAddress);
      libc.symbols.free(address);
      return undefined;
    }
    const words = new Int32Array(toArrayBuffer(address as unknown as Pointer, 0, SharedChunks.#headerBytes(slotCount)));
    words[Header.SLOT_COUNT] = slotCount;
    words[Header.CHUNK_SIZE_PAGES] = chunkSize / PAGE_BYTES;
    words[Header.IDENTITY] = identity | 0;
    words[Header.DATA_LOW] = dataAddress % 2 ** 32 | 0;
    words[Header.DATA_HIGH] = Math.floor(dataAddress / 2 ** 32);
    words[Header.REFS] = 1;
    return new SharedChunks(address, words, dataAddress);
  }

  /**
   * Takes a reference to a table another thread created. Returns undefined if its holders have
   * all let go already, or if it caches something else than `identity` and `chunkSize` say (a
   * different version of the object): the caller then makes its own rather than mixing versions.
   */
  static attach(address: number, identity: number, chunkSize: number): SharedChunks | undefined {
    const words = SharedChunks.#headerWords(address);
    if (words[Header.IDENTITY] !== (identity | 0) || words[Header.CHUNK_SIZE_PAGES]! * PAGE_BYTES !== chunkSize) return undefined;
    const lockAddress = address + Header.MUTEX * 4;
    if (libc.symbols.pthread_mutex_lock(lockAddress) !== 0) return undefined;
    const refs = words[Header.REFS]!;
    if (refs > 0) words[Header.REFS] = refs + 1;
    const dataAddress = (words[Header.DATA_LOW]! >>> 0) + words[Header.DATA_HIGH]! * 2 ** 32;
    libc.symbols.pthread_mutex_unlock(lockAddress);
    return refs > 0 ? new SharedChunks(address, words, dataAddress) : undefined;
  }

  /** Drops this thread's reference; the last one frees the chunk buffers. Idempotent. */
  detach(): void {
    if (!this.#attached) return;
    this.#attached = false;
    this.#lock();
    const refs = --this.#words[Header.REFS]!;
    this.#unlock();
    if (refs === 0) libc.symbols.free(this.#dataAddress);
  }

  #lock(): void {
    const result = libc.symbols.pthread_mutex_lock(this.address + Header.MUTEX * 4);
    if (result !== 0) throw new Error(`SharedChunks: pthread_mutex_lock failed (${result})`);
  }

  #unlock(): void {
    libc.symbols.pthread_mutex_unlock(this.address + Header.MUTEX * 4);
  }

  #field(slot: number, field: Field): number {
    return Header.WORDS + slot * Field.SLOT_WORDS + field;
  }

  #bytes(slot: number, byteLength: number): Uint8Array {
    return new Uint8Array(this.#data, slot * this.chunkSize, byteLength);
  }

  /**
   * Finds chunk `index` (byteLength bytes), or claims a slot for it when `claim` allows and one
   * is free or holds a chunk nobody is reading (least recently used first). With claim
   * "if-idle", claims only while fewer than `fetchingMax` slots are being fetched (read-ahead).
   */
  lookup(index: number, byteLength: number, claim: "always" | "if-idle" | "never", fetchingMax: number): Lookup {
    const w = this.#words;
    this.#lock();
    try {
      let victim = -1;
      let fetching = 0;
      for (let slot = 0; slot < this.slotCount; slot++) {
        const state = w[this.#field(slot, Field.STATE)]!;
        if (state !== State.FREE && w[this.#field(slot, Field.CHUNK_INDEX)] === index) {
          if (state === State.FETCHING) return { kind: "fetching" };
          w[this.#field(slot, Field.PINS)]!++;
          w[this.#field(slot, Field.LAST_USE)] = ++w[Header.CLOCK]!;
          return { kind: "ready", slot, bytes: this.#bytes(slot, w[this.#field(slot, Field.BYTE_LENGTH)]!) };
        }
        if (state === State.FETCHING) fetching++;
        const evictable = state === State.FREE || (state === State.READY && w[this.#field(slot, Field.PINS)] === 0);
        if (evictable && (victim < 0 || this.#age(slot) < this.#age(victim))) victim = slot;
      }
      if (claim === "never" || (claim === "if-idle" && fetching >= fetchingMax)) return { kind: "full" };
      if (victim < 0) return { kind: "full" };
      w[this.#field(victim, Field.STATE)] = State.FETCHING;
      w[this.#field(victim, Field.CHUNK_INDEX)] = index;
      w[this.#field(victim, Field.BYTE_LENGTH)] = byteLength;
      w[this.#field(victim, Field.DELIVERED_BYTES)] = 0;
      w[this.#field(victim, Field.PINS)] = 0;
      w[this.#field(victim, Field.LAST_USE)] = ++w[Header.CLOCK]!;
      return { kind: "claimed", slot: victim, bytes: this.#bytes(victim, byteLength) };
    } finally {
      this.#unlock();
    }
  }

  /**
   * Which slot a claim takes first: free slots, then chunks every byte of which has been read
   * (least recently used first), then other unpinned chunks (read-ahead not read yet).
   */
  #age(slot: number): number {
    const w = this.#words;
    if (w[this.#field(slot, Field.STATE)] === State.FREE) return -(2 ** 34);
    const lastUse = w[this.#field(slot, Field.LAST_USE)]!;
    const consumed = w[this.#field(slot, Field.DELIVERED_BYTES)]! >= w[this.#field(slot, Field.BYTE_LENGTH)]!;
    return consumed ? lastUse - 2 ** 33 : lastUse;
  }

  /** The claimed slot holds its chunk's bytes now: readers may pin it; `pin` pins it for the caller. */
  fetched(slot: number, pin: boolean): void {
    this.#lock();
    this.#words[this.#field(slot, Field.STATE)] = State.READY;
    if (pin) this.#words[this.#field(slot, Field.PINS)]!++;
    this.#unlock();
  }

  /** The claimed slot's fetch failed: it is free again (a waiter will claim and try itself). */
  failed(slot: number): void {
    this.#lock();
    this.#words[this.#field(slot, Field.STATE)] = State.FREE;
    this.#unlock();
  }

  /**
   * A reader is done with a pinned slot, having used byteCount of its bytes. A chunk every byte
   * of which has been read stays in its slot, the first to be reused: freeing it at once let a
   * worker whose read-ahead lagged behind (its own last read was earlier in the object) fetch it
   * again, since nothing said it had been read (measured: one chunk fetched twice, under load).
   */
  delivered(slot: number, byteCount: number): void {
    const w = this.#words;
    this.#lock();
    w[this.#field(slot, Field.PINS)]!--;
    w[this.#field(slot, Field.DELIVERED_BYTES)]! += byteCount;
    this.#unlock();
  }
}
