/**
 * A chunk cache shared by every thread that reads one remote object: the fill workers of a
 * region each build their own store instance, and without sharing each would fetch the same
 * chunks (measured: 2.3x the object's bytes with two fillers). The table lives in native memory
 * (libc calloc) that the main thread's instance allocates; its address travels to the workers in
 * the store's descriptor, like a FileStore's shared descriptor. Each instance holds a reference;
 * the last to let go frees it, so a worker still finishing a fetch never writes freed memory.
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
  /** The pthread_mutex_t (40 bytes on Linux x86-64 and arm64; room for 64). */
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
  readonly address: number;
  readonly slotCount: number;
  readonly chunkSize: number;
  readonly #words: Int32Array;
  readonly #memory: ArrayBuffer;
  #attached = true;

  private constructor(address: number) {
    this.address = address;
    const header = new Int32Array(toArrayBuffer(address as unknown as Pointer, 0, PAGE_BYTES));
    this.slotCount = header[Header.SLOT_COUNT]!;
    this.chunkSize = header[Header.CHUNK_SIZE_PAGES]! * PAGE_BYTES;
    const totalBytes = SharedChunks.#dataOffset(this.slotCount) + this.slotCount * this.chunkSize;
    this.#memory = toArrayBuffer(address as unknown as Pointer, 0, totalBytes);
    this.#words = new Int32Array(this.#memory, 0, SharedChunks.#dataOffset(this.slotCount) / 4);
  }

  static #dataOffset(slotCount: number): number {
    const headerBytes = (Header.WORDS + slotCount * Field.SLOT_WORDS) * 4;
    return Math.ceil(headerBytes / PAGE_BYTES) * PAGE_BYTES;
  }

  /**
   * Allocates a table of slotCount chunks of chunkSize bytes (a multiple of 4096), holding one
   * reference. Returns undefined if the memory cannot be had. Untouched slots cost no memory:
   * calloc of this size maps fresh zero pages.
   */
  static create(slotCount: number, chunkSize: number, identity: number): SharedChunks | undefined {
    if (!(slotCount >= 1 && slotCount <= SHARED_SLOTS_MAX) || chunkSize % PAGE_BYTES !== 0) {
      throw new Error(`SharedChunks.create: bad geometry ${slotCount} x ${chunkSize}`);
    }
    const totalBytes = SharedChunks.#dataOffset(slotCount) + slotCount * chunkSize;
    const address = Number(libc.symbols.calloc(1, totalBytes));
    if (!address) return undefined;
    const header = new Int32Array(toArrayBuffer(address as unknown as Pointer, 0, PAGE_BYTES));
    header[Header.SLOT_COUNT] = slotCount;
    header[Header.CHUNK_SIZE_PAGES] = chunkSize / PAGE_BYTES;
    header[Header.IDENTITY] = identity | 0;
    header[Header.REFS] = 1;
    const initialized = libc.symbols.pthread_mutex_init(address + Header.MUTEX * 4, 0);
    if (initialized !== 0) {
      libc.symbols.free(address);
      return undefined;
    }
    return new SharedChunks(address);
  }

  /**
   * Takes a reference to a table another thread created and still holds (a region's workers
   * attach while serving its requests, before the main thread can let go). Returns undefined if
   * the table caches something else than `identity` and `chunkSize` say (a different version of
   * the object), so the caller makes its own rather than mixing versions.
   */
  static attach(address: number, identity: number, chunkSize: number): SharedChunks | undefined {
    const table = new SharedChunks(address);
    if (table.#words[Header.IDENTITY] !== (identity | 0) || table.chunkSize !== chunkSize) return undefined;
    table.#lock();
    const refs = table.#words[Header.REFS]!++;
    table.#unlock();
    if (refs <= 0) throw new Error(`SharedChunks.attach: table at ${address} was already freed`);
    return table;
  }

  /** Drops this thread's reference; the last one frees the memory. Idempotent. */
  detach(): void {
    if (!this.#attached) return;
    this.#attached = false;
    this.#lock();
    const refs = --this.#words[Header.REFS]!;
    this.#unlock();
    // Nobody else holds the table, so nobody can be waiting on its mutex.
    if (refs === 0) libc.symbols.free(this.address);
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
    return new Uint8Array(this.#memory, SharedChunks.#dataOffset(this.slotCount) + slot * this.chunkSize, byteLength);
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

  /** Free slots count as the oldest. */
  #age(slot: number): number {
    return this.#words[this.#field(slot, Field.STATE)] === State.FREE ? -1 : this.#words[this.#field(slot, Field.LAST_USE)]!;
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
   * A reader is done with a pinned slot, having used byteCount of its bytes: once every byte of
   * the chunk has been read, its pages are filled and the slot is free.
   */
  delivered(slot: number, byteCount: number): void {
    const w = this.#words;
    this.#lock();
    const pins = --w[this.#field(slot, Field.PINS)]!;
    const delivered = (w[this.#field(slot, Field.DELIVERED_BYTES)]! += byteCount);
    if (pins === 0 && delivered >= w[this.#field(slot, Field.BYTE_LENGTH)]!) w[this.#field(slot, Field.STATE)] = State.FREE;
    this.#unlock();
  }
}
