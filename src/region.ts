/**
 * Region: the mapped memory of one store, filled on demand by the engine.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { Engine } from "./engine.ts";
import { ErrorCode, UmapError, describeError, describeValue, engineError, invalidArgument } from "./errors.ts";
import { FillAnswer, PageState, REGION_STAT_FIELDS } from "./native.ts";
import { closeStore, type StoreInstance } from "./store.ts";

/** JavaScriptCore's limit for one ArrayBuffer: larger regions are read through view(). */
export const MAX_VIEW_BYTES = 2 ** 32;
/** How often close(), flush() and prefetch() look again at requests still in flight. */
const POLL_INTERVAL_MS = 1;
/**
 * prefetch() asks again, after a failed fill, for pages that another request was filling and
 * left empty, at most this many times in all (each round's own failure rejects it).
 */
const PREFETCH_ROUNDS_MAX = 4;
const EAGAIN = -11;
const ENOMEM = -12;
const EIO = -5;

export type RegionStats = { [K in (typeof REGION_STAT_FIELDS)[number]]: number };

/** A fill that failed for good, as region.errors() reports it. */
export interface FillError {
  /** The store range the failed read covered. */
  readonly byteOffset: number;
  readonly byteLength: number;
  /** How the access that faulted there was answered, if one did. */
  readonly answer: "sigbus" | "zero" | "none";
  /** The store's error. */
  readonly message: string;
}

/** Failed fills a region remembers (UMAP_REGION_ERRORS_MAX in csrc/umap.c): the latest ones. */
export const FILL_ERRORS_KEPT = 64;

/**
 * Writable regions still open. When the script's event loop runs dry, each is flushed once more
 * before the process exits, so a script that ends without close() keeps its writes. On SIGINT,
 * SIGTERM or SIGHUP with no handler of the application's own, they are flushed too, and then the
 * signal is raised again so that the process ends as the signal says.
 */
const openWritableRegions = new Set<Region>();
let exitFlushInstalled = false;
/** How long a signal waits for the flush of the open writable regions before it ends the process. */
export const SIGNAL_FLUSH_TIMEOUT_MS = 10_000;
const FLUSHED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
type FlushedSignal = (typeof FLUSHED_SIGNALS)[number];
let signalFlushInstalled = false;

function installExitFlush(): void {
  if (!exitFlushInstalled) {
    exitFlushInstalled = true;
    process.on("beforeExit", () => {
      for (const region of openWritableRegions) region.flushBeforeExit();
    });
  }
  if (!signalFlushInstalled) {
    signalFlushInstalled = true;
    for (const signal of FLUSHED_SIGNALS) process.on(signal, flushOnSignal);
  }
}

/** Takes the signal handlers away once no writable region is open: signals act as before. */
function removeSignalFlushIfIdle(): void {
  if (openWritableRegions.size > 0 || !signalFlushInstalled) return;
  signalFlushInstalled = false;
  for (const signal of FLUSHED_SIGNALS) process.off(signal, flushOnSignal);
}

function flushOnSignal(signal: FlushedSignal): void {
  // The application handles this signal itself: what happens next is its decision.
  if (process.listenerCount(signal) > 1) return;
  // From here on the signal acts as it would without bun-umap: a second one ends the process at once.
  signalFlushInstalled = false;
  for (const other of FLUSHED_SIGNALS) process.off(other, flushOnSignal);
  const regions = [...openWritableRegions];
  // A region already closing flushes as part of close().
  const flushed = Promise.allSettled(regions.map((region) => (region.closed ? region.close() : region.flush()))).then((results) => {
    results.forEach((result, i) => {
      if (result.status === "rejected") {
        process.stderr.write(`bun-umap: flushing ${regions[i]!.label} on ${signal} failed: ${describeError(result.reason)}\n`);
      }
    });
  });
  const timedOut = Bun.sleep(SIGNAL_FLUSH_TIMEOUT_MS).then(() => {
    process.stderr.write(`bun-umap: flushing on ${signal} took over ${SIGNAL_FLUSH_TIMEOUT_MS} ms; ending without waiting for it\n`);
  });
  void Promise.race([flushed, timedOut]).then(() => process.kill(process.pid, signal));
}

export class Region {
  /** Bytes of the store: not rounded up to a page. */
  readonly byteLength: number;
  readonly pageSize: number;
  /** The region's first byte, for sharing it with other threads (bun:ffi `toArrayBuffer`). */
  readonly address: number;
  /** Names the store in messages. */
  readonly label: string;
  readonly #engine: Engine;
  readonly #slot: number;
  /** The main thread's instance of the store: flush() makes the workers' writes durable with it. */
  readonly #store: StoreInstance;
  readonly #ownsStore: boolean;
  readonly #sharedFd: number | undefined;
  readonly writable: boolean;
  /** The flush mark whose write-backs are known to be in the store (see umap_region_flush). */
  #flushedMark = 0;
  #exitFlushFailed = false;
  /** close() got as far as telling the engine: a retried close() resumes from there. */
  #closeBegun = false;
  readonly #errorText = new Uint8Array(512);
  /** Every ArrayBuffer handed out over region memory: close() detaches them. */
  readonly #buffers: WeakRef<ArrayBuffer>[] = [];
  /** #buffers is pruned of collected entries when it grows past this (doubling keeps it linear). */
  #buffersPruneAt = 1024;
  #bytes: Uint8Array | undefined;
  #closing: Promise<void> | undefined;
  readonly #statsOut = new Float64Array(REGION_STAT_FIELDS.length);

  /** @internal Regions are made by umap(). */
  constructor(init: {
    engine: Engine;
    slot: number;
    label: string;
    byteLength: number;
    pageSize: number;
    writable: boolean;
    store: StoreInstance;
    /** umap() opened the store for this region: it is closed with the region. */
    ownsStore: boolean;
    /** A descriptor the region's workers share, closed when the region is released. */
    sharedFd: number | undefined;
  }) {
    this.#sharedFd = init.sharedFd;
    this.#engine = init.engine;
    this.#slot = init.slot;
    this.#store = init.store;
    this.#ownsStore = init.ownsStore;
    this.writable = init.writable;
    this.label = init.label;
    this.byteLength = init.byteLength;
    this.pageSize = init.pageSize;
    const base = init.engine.native.umap_region_base(init.slot);
    if (base === null) throw new UmapError(ErrorCode.INTERNAL, `region ${init.label}: the engine lost its memory`);
    this.address = Number(base);
    if (this.writable) {
      openWritableRegions.add(this);
      installExitFlush();
    }
  }

  /** The whole region as bytes (regions up to 4 GiB; use view() beyond). */
  get bytes(): Uint8Array {
    this.#checkOpen("bytes");
    if (this.byteLength > MAX_VIEW_BYTES) {
      throw new UmapError(
        ErrorCode.UNSUPPORTED,
        `region ${this.label} is ${this.byteLength} bytes: one array can hold at most ${MAX_VIEW_BYTES}; use view(byteOffset, byteLength)`,
      );
    }
    this.#bytes ??= new Uint8Array(this.#arrayBuffer(0, this.byteLength));
    return this.#bytes;
  }

  /** Bytes [byteOffset, byteOffset + byteLength) of the region, at most 4 GiB at a time. */
  view(byteOffset: number, byteLength: number): Uint8Array {
    this.#checkOpen("view()");
    this.#checkRange("view", byteOffset, byteLength);
    if (byteLength > MAX_VIEW_BYTES) {
      invalidArgument(`region ${this.label}: view of ${byteLength} bytes is over the ${MAX_VIEW_BYTES}-byte limit of one array`);
    }
    if (this.byteLength <= MAX_VIEW_BYTES) return this.bytes.subarray(byteOffset, byteOffset + byteLength);
    if (byteLength === 0) return new Uint8Array(0);
    return new Uint8Array(this.#arrayBuffer(byteOffset, byteLength));
  }

  /**
   * Fills every page of the range and resolves once each has been filled (pages may be evicted
   * again later under buffer pressure). Rejects with ERR_UMAP_STORE if the store fails. The
   * range must fit below the buffer's low-water mark.
   */
  async prefetch(byteOffset: number, byteLength: number): Promise<void> {
    this.#checkOpen("prefetch()");
    this.#checkRange("prefetch", byteOffset, byteLength);
    if (byteLength === 0) return;
    const firstPage = Math.floor(byteOffset / this.pageSize);
    const pageCount = Math.ceil((byteOffset + byteLength) / this.pageSize) - firstPage;
    const settings = this.#engine.settings;
    const lowWaterBytes = Math.floor((settings.bufferBytes * settings.lowWaterPercent) / 100);
    if (pageCount * this.pageSize > lowWaterBytes) {
      invalidArgument(
        `region ${this.label}: prefetch of ${pageCount} pages (${pageCount * this.pageSize} bytes) cannot be resident at once: ` +
          `the buffer's low-water mark is ${lowWaterBytes} bytes; prefetch in smaller windows`,
      );
    }
    const native = this.#engine.native;
    const fillErrorsBefore = this.#stat("fillErrors");
    for (let round = 1; ; round++) {
      let ticket: number;
      while ((ticket = native.umap_region_prefetch(this.#slot, firstPage, pageCount)) === EAGAIN) {
        await Bun.sleep(POLL_INTERVAL_MS);
      }
      if (ticket < 0) throw engineError(ticket, `prefetch of region ${this.label}`);
      await this.#engine.waitForTicket(ticket, `prefetch of ${this.label} at byte offset ${byteOffset}`);
      // Pages that other requests were already filling when the prefetch began are not part of
      // its ticket: wait for them too.
      while (!this.closed && native.umap_region_count_state(this.#slot, firstPage, pageCount, PageState.FILLING) > 0) {
        await Bun.sleep(POLL_INTERVAL_MS);
      }
      // close() began meanwhile: the pages may already be gone, so the prefetch did not do its job.
      if (this.closed) throw new UmapError(ErrorCode.CLOSED, `region ${this.label} was closed during prefetch()`);
      // Those other requests may have failed, which leaves their pages empty: their outcome is
      // not this ticket's, so ask again, and a page that fails in a ticket of this prefetch
      // rejects it. Only after a failed fill: a page that is empty because eviction took it
      // back was filled, which is all prefetch() promises.
      if (round >= PREFETCH_ROUNDS_MAX || this.#stat("fillErrors") === fillErrorsBefore) return;
      if (native.umap_region_count_state(this.#slot, firstPage, pageCount, PageState.EMPTY) === 0) return;
    }
  }

  /**
   * Resolves once every page dirty at the call is written to the store and the store is
   * flushed (fsync for files). Rejects with ERR_UMAP_STORE if the store fails; the pages stay
   * dirty, so a later flush() can succeed. Read-only regions have nothing to write.
   */
  async flush(): Promise<void> {
    this.#checkOpen("flush()");
    if (this.writable) await this.#flushPages();
  }

  /**
   * Flushes (writable regions), then releases the region: detaches every view it handed out
   * (they read as empty afterwards), unmaps its memory and closes the store. Idempotent. If the
   * flush fails it rejects and the region stays open, so nothing dirty is dropped.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close().catch((error: unknown) => {
      this.#closing = undefined;
      throw error;
    });
    return this.#closing;
  }

  /** @internal Starts one last flush when the process is about to exit, if anything is dirty. */
  flushBeforeExit(): void {
    if (this.#closing || this.#exitFlushFailed) return;
    const native = this.#engine.native;
    const mark = native.umap_region_flush(this.#slot);
    // Nothing new since the last flush: no work, so the process can exit.
    if (mark >= 0 && mark === this.#flushedMark) return;
    this.#flushPages(mark).catch((error: unknown) => {
      this.#exitFlushFailed = true;
      process.exitCode ||= 1;
      process.stderr.write(`bun-umap: flushing ${this.label} before exit failed: ${(error as Error).message}\n`);
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  stats(): RegionStats {
    this.#checkOpen("stats()");
    this.#stat("faults"); // reads every counter into #statsOut
    const stats = {} as RegionStats;
    REGION_STAT_FIELDS.forEach((name, i) => {
      stats[name] = this.#statsOut[i]!;
    });
    return stats;
  }

  /**
   * The fills of this region that failed for good, oldest first: the last 64 of them
   * (`stats().fillErrors` counts them all). With `onFillError: "zero"`, the pages they answered
   * read as zeros.
   */
  errors(): FillError[] {
    this.#checkOpen("errors()");
    const native = this.#engine.native;
    const fields = new Float64Array(4);
    const message = new Uint8Array(512);
    const errors: FillError[] = [];
    for (let index = 0; index < FILL_ERRORS_KEPT; index++) {
      const length = native.umap_region_error(this.#slot, index, fields, message, message.length);
      if (length < 0) break;
      errors.push({
        byteOffset: fields[0]!,
        byteLength: fields[1]!,
        answer: fields[2] === FillAnswer.ZEROED ? "zero" : fields[2] === FillAnswer.POISONED ? "sigbus" : "none",
        message: new TextDecoder().decode(message.subarray(0, length)),
      });
    }
    return errors;
  }

  /** @internal The engine's slot of this region (tests use it with the engine's hooks). */
  get slot(): number {
    return this.#slot;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /**
   * Snapshots every dirty page for write-back (or takes the mark a caller already got), waits
   * until all write-backs below the mark are in the store, then flushes the store.
   */
  async #flushPages(startedMark?: number): Promise<void> {
    const native = this.#engine.native;
    // Write failures from here on, of this flush's pages or of pages evicted meanwhile, fail it.
    const failuresBefore = this.#stat("writebackErrors");
    let mark = startedMark ?? native.umap_region_flush(this.#slot);
    // The write queue was full or memory short: what was copied stays queued; copy the rest.
    while (mark === EAGAIN || mark === ENOMEM) {
      await Bun.sleep(POLL_INTERVAL_MS);
      mark = native.umap_region_flush(this.#slot);
    }
    if (mark < 0) throw engineError(mark, `flushing region ${this.label}`);
    for (;;) {
      const pending = native.umap_region_writeback_pending(this.#slot, mark, failuresBefore, this.#errorText, this.#errorText.length);
      if (pending === 0) break;
      if (pending === EIO) {
        const end = this.#errorText.indexOf(0);
        const text = new TextDecoder().decode(this.#errorText.subarray(0, end < 0 ? undefined : end));
        throw new UmapError(ErrorCode.STORE, `flush of ${this.label} failed; its dirty pages are kept for the next flush: ${text}`, {
          cause: new Error(text),
        });
      }
      if (pending < 0) throw engineError(pending, `flushing region ${this.label}`);
      await Bun.sleep(POLL_INTERVAL_MS);
    }
    try {
      await this.#store.flush?.();
    } catch (error) {
      throw new UmapError(ErrorCode.STORE, `flush of ${this.label} failed: ${describeError(error)}`, { cause: error });
    }
    this.#flushedMark = Math.max(this.#flushedMark, mark);
  }

  #stat(name: (typeof REGION_STAT_FIELDS)[number]): number {
    const result = this.#engine.native.umap_region_stats(this.#slot, this.#statsOut);
    if (result < 0) throw engineError(result, `stats of region ${this.label}`);
    return this.#statsOut[REGION_STAT_FIELDS.indexOf(name)]!;
  }

  async #close(): Promise<void> {
    const native = this.#engine.native;
    if (this.writable && !this.#closeBegun) await this.#flushPages();
    if (!this.#closeBegun) {
      const begun = native.umap_region_close_begin(this.#slot);
      if (begun < 0) throw engineError(begun, `closing region ${this.label}`);
      this.#closeBegun = true;
    }
    // Writes that raced the flush above (another thread still writing) are written now.
    if (this.writable) await this.#flushPages();
    while (native.umap_region_inflight(this.#slot) > 0) await Bun.sleep(POLL_INTERVAL_MS);
    // Detach before unmapping: a view kept past close() then reads as empty instead of
    // touching unmapped memory.
    for (const ref of this.#buffers) ref.deref()?.transfer(0);
    this.#buffers.length = 0;
    this.#bytes = undefined;
    const released = native.umap_region_release(this.#slot);
    if (released < 0) throw engineError(released, `releasing region ${this.label}`);
    openWritableRegions.delete(this);
    removeSignalFlushIfIdle();
    if (this.#sharedFd !== undefined) native.umap_fd_close(this.#sharedFd);
    try {
      if (this.#ownsStore) await closeStore(this.#store, this.label);
    } finally {
      await this.#engine.removeRegion(this.#slot);
    }
  }

  #arrayBuffer(byteOffset: number, byteLength: number): ArrayBuffer {
    const buffer = toArrayBuffer((this.address + byteOffset) as unknown as Pointer, 0, byteLength);
    if (this.#buffers.length >= this.#buffersPruneAt) {
      const live = this.#buffers.filter((ref) => ref.deref() !== undefined);
      this.#buffers.splice(0, this.#buffers.length, ...live);
      this.#buffersPruneAt = Math.max(1024, 2 * live.length);
    }
    this.#buffers.push(new WeakRef(buffer));
    return buffer;
  }

  #checkOpen(method: string): void {
    if (this.#closing || this.#closeBegun) {
      throw new UmapError(ErrorCode.CLOSED, `region ${this.label} is closed: cannot use ${method}`);
    }
  }

  #checkRange(method: string, byteOffset: number, byteLength: number): void {
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0) {
      invalidArgument(`region ${this.label}: ${method}() byteOffset must be a whole number >= 0, got ${describeValue(byteOffset)}`);
    }
    if (!Number.isSafeInteger(byteLength) || byteLength < 0) {
      invalidArgument(`region ${this.label}: ${method}() byteLength must be a whole number >= 0, got ${describeValue(byteLength)}`);
    }
    if (byteOffset + byteLength > this.byteLength) {
      invalidArgument(
        `region ${this.label}: ${method}() range [${byteOffset}, ${byteOffset + byteLength}) is past its end (${this.byteLength} bytes)`,
      );
    }
  }
}
