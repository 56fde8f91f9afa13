/**
 * A fill worker: a Bun Worker thread that serves the engine's fill requests. It blocks in
 * umap_worker_next() until a request is ready, reads the region's store into the staging buffer
 * the request names, and hands the result back with umap_worker_complete().
 *
 * Rules that keep it from deadlocking against the application thread (see the README's Design):
 * it never touches region memory, never waits on the main thread, and never logs through
 * `console` (the faulting thread may hold the console's lock): it writes to fd 2 directly.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { describeError } from "./errors.ts";
import { Feature, linkNative, RequestField, type NativeAddresses } from "./native.ts";
import { openStore, storeLabel, type StoreDescriptor, type StoreInstance } from "./store.ts";

export interface FillWorkerData {
  addresses: NativeAddresses;
}

/** Messages a fill worker posts to the main thread. */
export type FillWorkerMessage =
  | { type: "ready" }
  | { type: "failed"; error: string }
  | { type: "ticket"; ticket: number; error: string | null };

const native = linkNative((workerData as FillWorkerData).addresses);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface OpenStore {
  generation: number;
  store: StoreInstance;
  label: string;
}
const stores = new Map<number, OpenStore>();
const request = new Float64Array(RequestField.COUNT);
const ticketError = new Uint8Array(512);
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
  return opened;
}

async function closeQuietly(open: OpenStore): Promise<void> {
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

/** Reads one request's bytes into the staging buffer; returns an error message or null. */
async function fill(slot: number, generation: number, byteOffset: number, byteLength: number): Promise<string | null> {
  let open: OpenStore | undefined;
  try {
    open = stores.get(slot);
    if (open?.generation !== generation) open = await storeFor(slot, generation);
    const target = stagingView(request[RequestField.STAGING]!, request[RequestField.STAGING_BYTES]!).subarray(0, byteLength);
    // The last page of a store whose size is not a page multiple: the bytes past the end are zero.
    const valid = Math.max(0, Math.min(byteLength, open.store.size - byteOffset));
    const pending = open.store.read(byteOffset, target.subarray(0, valid));
    if (pending) await pending;
    if (valid < byteLength) target.fill(0, valid);
    return null;
  } catch (error) {
    const where = open ? open.label : `region ${slot}`;
    const message = `cannot fill ${where} at byte offset ${byteOffset} (${byteLength} bytes): ${describeError(error)}`;
    if (request[RequestField.FAULTED] === 1) {
      const answer =
        native.umap_engine_features() & Feature.POISON
          ? "the access that needed it gets SIGBUS"
          : "the access that needed it reads zeros (this kernel has no UFFDIO_POISON to raise SIGBUS)";
      log(`${message}; ${answer}`);
    }
    return message;
  }
}

async function serve(): Promise<void> {
  const id = native.umap_worker_register();
  if (id < 0) {
    parentPort!.postMessage({ type: "failed", error: `umap_worker_register: ${id}` } satisfies FillWorkerMessage);
    return;
  }
  parentPort!.postMessage({ type: "ready" } satisfies FillWorkerMessage);
  try {
    for (;;) {
      const got = native.umap_worker_next(id, request);
      if (got === 0) break;
      if (got < 0) {
        log(`worker ${id}: umap_worker_next failed (${got}); retrying`);
        await Bun.sleep(10);
        continue;
      }
      const byteLength = request[RequestField.BYTE_LENGTH]!;
      const error =
        byteLength > 0
          ? await fill(request[RequestField.SLOT]!, request[RequestField.GENERATION]!, request[RequestField.BYTE_OFFSET]!, byteLength)
          : null;
      const errorBytes = error ? encoder.encode(error) : null;
      const ticket = native.umap_worker_complete(id, error ? -5 : 0, errorBytes, errorBytes?.length ?? 0);
      if (ticket > 0) {
        const length = native.umap_ticket_take(ticket, ticketError, ticketError.length);
        parentPort!.postMessage({
          type: "ticket",
          ticket,
          error: length > 0 ? decoder.decode(ticketError.subarray(0, length)) : null,
        } satisfies FillWorkerMessage);
      }
    }
  } finally {
    native.umap_worker_unregister(id);
    for (const open of stores.values()) await closeQuietly(open);
    stores.clear();
  }
}

await serve();
