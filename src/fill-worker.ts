/**
 * A worker thread of the engine: a filler serves fill requests (it reads the region's store into
 * the staging buffer the request names), an evictor serves write-backs (it writes a page's
 * write-back copy to the store). Either blocks in umap_worker_next() until a request is ready
 * and hands the result back with umap_worker_complete().
 *
 * Rules that keep it from deadlocking against the application thread (see the README's Design):
 * it never touches region memory, never waits on the main thread, and never logs through
 * `console` (the faulting thread may hold the console's lock): it writes to fd 2 directly.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { describeError } from "./errors.ts";
import { Feature, linkNative, RequestField, RequestKind, type NativeAddresses, type WorkerRole } from "./native.ts";
import { openStore, storeLabel, type StoreDescriptor, type StoreInstance } from "./store.ts";

export interface FillWorkerData {
  addresses: NativeAddresses;
  role: WorkerRole;
}

/** Messages a fill worker posts to the main thread. */
export type FillWorkerMessage =
  | { type: "ready" }
  | { type: "failed"; error: string }
  | { type: "ticket"; ticket: number };

const { addresses, role } = workerData as FillWorkerData;
const native = linkNative(addresses);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface OpenStore {
  generation: number;
  store: StoreInstance;
  label: string;
}
const stores = new Map<number, OpenStore>();
/** The open stores that can have fetches of their own in flight (they define pending()). */
const backgroundStores = new Set<StoreInstance>();
const request = new Float64Array(RequestField.COUNT);
let releasesSeen = 0;
let staging: { address: number; bytes: Uint8Array } | undefined;

function log(message: string): void {
  writeSync(2, `bun-umap: ${message}\n`);
}

async function storeFor(slot: number, generation: number): Promise<OpenStore> {
  const known = stores.get(slot);
  if (known?.generation === generation) return known;
  if (known) {
    stores.delete(slot);
    await closeQuietly(known);
  }
  let buffer = new Uint8Array(4096);
  let length = native.umap_region_descriptor(slot, generation, buffer, buffer.length);
  if (length > buffer.length) {
    buffer = new Uint8Array(length);
    length = native.umap_region_descriptor(slot, generation, buffer, buffer.length);
  }
  if (length < 0) throw new Error(`region ${slot} is gone`);
  const descriptor = JSON.parse(decoder.decode(buffer.subarray(0, length))) as StoreDescriptor;
  const store = await openStore(descriptor);
  const opened = { generation, store, label: storeLabel(store, descriptor) };
  stores.set(slot, opened);
  if (typeof store.pending === "function") backgroundStores.add(store);
  return opened;
}

/** Closes the stores of regions released since the last look (their slots changed generation). */
async function dropReleasedStores(): Promise<void> {
  for (const [slot, open] of stores) {
    if (native.umap_region_generation(slot) !== open.generation) {
      stores.delete(slot);
      await closeQuietly(open);
    }
  }
}

async function closeQuietly(open: OpenStore): Promise<void> {
  backgroundStores.delete(open.store);
  try {
    await open.store.close?.();
  } catch (error) {
    log(`closing ${open.label} failed: ${describeError(error)}`);
  }
}

/** The worker's staging buffer as bytes; the engine moves it only when it has to grow it. */
function stagingView(address: number, byteLength: number): Uint8Array {
  if (staging?.address !== address || staging.bytes.length !== byteLength) {
    staging = { address, bytes: new Uint8Array(toArrayBuffer(address as unknown as Pointer, 0, byteLength)) };
  }
  return staging.bytes;
}

/** Serves one fill or write-back request; returns an error message or null. */
async function serveRequest(kind: number, slot: number, generation: number, byteOffset: number, byteLength: number): Promise<string | null> {
  let open: OpenStore | undefined;
  try {
    open = stores.get(slot);
    if (open?.generation !== generation) open = await storeFor(slot, generation);
    // The last page of a store whose size is not a page multiple: past the end, a fill
    // reads zeros and a write-back writes nothing.
    const valid = Math.max(0, Math.min(byteLength, open.store.size - byteOffset));
    if (kind === RequestKind.WRITE) {
      const source = new Uint8Array(toArrayBuffer(request[RequestField.STAGING]! as unknown as Pointer, 0, byteLength));
      if (typeof open.store.write !== "function") throw new Error(`${open.label} cannot be written`);
      const pending = open.store.write(byteOffset, source.subarray(0, valid));
      if (pending) await pending;
      return null;
    }
    const target = stagingView(request[RequestField.STAGING]!, request[RequestField.STAGING_BYTES]!).subarray(0, byteLength);
    // Never let a store that fills less than it should leave an earlier fill's bytes behind.
    target.fill(0);
    const returned = open.store.read(byteOffset, target.subarray(0, valid));
    if (returned !== undefined) {
      if (!(returned instanceof Promise)) {
        throw new Error(`read() must return undefined or a Promise, returned ${typeof returned}`);
      }
      await returned;
    }
    return null;
  } catch (error) {
    const where = open ? open.label : `region ${slot}`;
    const verb = kind === RequestKind.WRITE ? "write back" : "fill";
    const message = `cannot ${verb} ${where} at byte offset ${byteOffset} (${byteLength} bytes): ${describeError(error)}`;
    if (kind === RequestKind.WRITE) {
      log(`${message}; the page stays dirty and flush() reports it`);
      return message;
    }
    if (request[RequestField.FAULTED] === 1) {
      const answer =
        native.umap_region_zero_failed_fills(slot) === 1
          ? "the access that needed it reads zeros (onFillError: \"zero\"); region.errors() has the error"
          : native.umap_engine_features() & Feature.POISON
            ? "the access that needed it gets SIGBUS"
            : "the access that needed it reads zeros (this kernel has no UFFDIO_POISON to raise SIGBUS)";
      log(`${message}; ${answer}`);
    }
    return message;
  }
}

const EAGAIN = -11;
/** How often a worker whose stores fetch in the background looks for new requests. */
const BACKGROUND_POLL_MS = 1;

/**
 * Settles when every open store's background work has; undefined if none has any. Looks only at
 * stores that define pending(): this runs before every request, and a worker may hold the stores
 * of thousands of regions.
 */
function backgroundWork(): Promise<unknown> | undefined {
  let pending: Promise<void>[] | undefined;
  for (const store of backgroundStores) {
    const work = store.pending!();
    if (work) (pending ??= []).push(work);
  }
  return pending && Promise.all(pending);
}

async function serve(): Promise<void> {
  const id = native.umap_worker_register(role);
  if (id < 0) {
    parentPort!.postMessage({ type: "failed", error: `umap_worker_register: ${id}` } satisfies FillWorkerMessage);
    return;
  }
  parentPort!.postMessage({ type: "ready" } satisfies FillWorkerMessage);
  try {
    for (;;) {
      // A store with fetches of its own in flight (read-ahead) needs this event loop to run for
      // them to progress: poll the engine instead of sleeping in it until they have settled.
      const background = backgroundWork();
      const got = background ? native.umap_worker_try_next(id, request) : native.umap_worker_next(id, request);
      if (got === EAGAIN) {
        await Promise.race([background, Bun.sleep(BACKGROUND_POLL_MS)]);
        continue;
      }
      if (got === 0) break;
      if (got < 0) {
        log(`worker ${id}: umap_worker_next failed (${got}); retrying`);
        await Bun.sleep(10);
        continue;
      }
      if (request[RequestField.RELEASES] !== releasesSeen) {
        releasesSeen = request[RequestField.RELEASES]!;
        await dropReleasedStores();
      }
      const kind = request[RequestField.KIND]!;
      const error =
        kind === RequestKind.MARKER
          ? null
          : await serveRequest(
              kind,
              request[RequestField.SLOT]!,
              request[RequestField.GENERATION]!,
              request[RequestField.BYTE_OFFSET]!,
              request[RequestField.BYTE_LENGTH]!,
            );
      const errorBytes = error ? encoder.encode(error) : null;
      const ticket = native.umap_worker_complete(id, error ? -5 : 0, errorBytes, errorBytes?.length ?? 0);
      // The main thread takes the ticket's outcome: only it frees the ticket number.
      if (ticket > 0) parentPort!.postMessage({ type: "ticket", ticket } satisfies FillWorkerMessage);
    }
  } finally {
    native.umap_worker_unregister(id);
    for (const open of stores.values()) await closeQuietly(open);
    stores.clear();
  }
}

await serve();
