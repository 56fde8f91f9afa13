import { Engine } from "./engine.ts";
import { ErrorCode, UmapError, describeError, engineError, invalidArgument } from "./errors.ts";
import { Feature } from "./native.ts";
import { resolveOptions, type UmapOptions } from "./options.ts";
import { Region } from "./region.ts";
import { closeStore, isStore, isStoreDescriptor, openStore, storeLabel, type Store, type StoreDescriptor, type StoreInstance } from "./store.ts";
import FileStore from "../stores/file.ts";

const ENOMEM = -12;
const ENOSPC = -28;
const EOPNOTSUPP = -95;
/** UMAP_REGIONS_MAX in csrc/umap.c. */
const REGIONS_MAX = 4096;
/*
 * Without UFFDIO_POISON a failed fill can only be answered with a zero page. In a writable region
 * a write to it would be lost, or written back over the store's unread bytes: neither is allowed.
 */
const POISON_REQUIRED =
  "writable regions need UFFDIO_POISON (Linux 6.6 or newer), so that a page whose fill fails is never " +
  "answered with zeros that could be written back over the store's data; this kernel lacks it: map read-only";
const WRITE_PROTECT_REQUIRED =
  "writable regions need userfaultfd write-protection for anonymous memory (Linux 5.7 or newer, 5.10 or newer " +
  "recommended), which this kernel does not offer: map read-only";

/**
 * Maps a store into memory: a path (a local file), a store object, or a descriptor from
 * defineStore(). Pages are filled on demand by the fill workers; with `writable: true`, dirty
 * pages are written back on eviction, flush() and close().
 */
export async function umap(target: string | Store | StoreDescriptor, options?: UmapOptions): Promise<Region> {
  const { engine: engineSettings, region: regionSettings, explicit } = resolveOptions(options, Engine.systemPageSize());
  const { writable, pageSize } = regionSettings;

  let store: StoreInstance;
  let descriptor: StoreDescriptor;
  let label: string;
  let ownsStore = true;
  if (typeof target === "string" && /^s3:\/\//i.test(target)) {
    invalidArgument(
      `umap: ${target} is an S3 location; umap() maps a path, a store or a store descriptor: pass ` +
        "new S3Store({ bucket, key, ...S3Options }) (parseS3Location() splits the location)",
    );
  } else if (typeof target === "string") {
    const file = new FileStore(target, { writable });
    [store, descriptor, label] = [file, file.describe(), file.label];
  } else if (isStore(target)) {
    [store, label] = [target, String(target.label)];
    ownsStore = false;
    descriptor = describeStore(target);
  } else if (isStoreDescriptor(target)) {
    descriptor = target;
    store = await openStore(target);
    label = storeLabel(store, target);
  } else {
    invalidArgument(`umap: target must be a path, a store or a store descriptor, got ${target === null ? "null" : typeof target}`);
  }

  // A FileStore's workers borrow one duplicate of its descriptor, which the region owns.
  let sharedFd: number | undefined;
  try {
    const size = checkedSize(store, label);
    if (size === 0) invalidArgument(`umap: ${label} is empty: there is nothing to map`);
    if (writable && (typeof store.write !== "function" || (store as Partial<Store>).writable === false)) {
      throw new UmapError(
        ErrorCode.UNSUPPORTED,
        `umap: ${label} is read-only, so it cannot be mapped with writable: true` +
          (store instanceof FileStore ? " (open it with new FileStore(path, { writable: true }))" : ""),
      );
    }
    const engine = await Engine.acquire(engineSettings, explicit, pageSize);
    let slot: number;
    try {
      if (writable && !(engine.features & Feature.WRITE_PROTECT)) {
        throw new UmapError(ErrorCode.UNSUPPORTED, `umap: ${label}: ${WRITE_PROTECT_REQUIRED}`);
      }
      if (writable && !(engine.features & Feature.POISON)) {
        throw new UmapError(ErrorCode.UNSUPPORTED, `umap: ${label}: ${POISON_REQUIRED}`);
      }
      if (writable) await engine.startEvictors();
      if (store instanceof FileStore && descriptor.module === FileStore.MODULE) {
        sharedFd = engine.native.umap_fd_dup(store.fd);
        if (sharedFd < 0) throw engineError(sharedFd, `umap: ${label}: duplicating its descriptor`, ErrorCode.STORE);
        descriptor = store.describe({ fd: sharedFd });
      }
      const pageCount = Math.ceil(size / pageSize);
      const json = new TextEncoder().encode(JSON.stringify(descriptor));
      slot = engine.native.umap_region_create(pageCount, pageSize, regionSettings.readAhead, writable ? 1 : 0, json, json.length);
      if (slot < 0) throw regionCreateError(slot, label, pageCount, pageSize);
      if (regionSettings.onFillError === "zero") engine.native.umap_region_set_zero_failed_fills(slot, 1);
    } catch (error) {
      if (sharedFd !== undefined && sharedFd >= 0) engine.native.umap_fd_close(sharedFd);
      await engine.release();
      throw error;
    }
    engine.addRegion(slot, pageSize);
    // A store the caller passed in stays theirs to close; one umap() opened is closed with the region.
    return new Region({ engine, slot, label, byteLength: size, pageSize, writable, store, ownsStore, sharedFd });
  } catch (error) {
    if (ownsStore) await closeStore(store, label).catch(() => {});
    throw error;
  }
}

/** A store object's descriptor, checked: its workers are built from it. */
function describeStore(store: Store): StoreDescriptor {
  let descriptor: unknown;
  try {
    descriptor = store.describe();
  } catch (error) {
    throw new UmapError(ErrorCode.STORE, `umap: ${String(store.label)}: describe() failed: ${describeError(error)}`, { cause: error });
  }
  if (!isStoreDescriptor(descriptor)) {
    invalidArgument(`umap: ${String(store.label)}: describe() must return { module, options }, got ${typeof descriptor}`);
  }
  return descriptor;
}

/** The store's size in bytes, checked: a whole number the engine can map. */
function checkedSize(store: StoreInstance, label: string): number {
  let size: unknown;
  try {
    size = store.size;
  } catch (error) {
    throw new UmapError(ErrorCode.STORE, `umap: ${label}: reading its size failed: ${describeError(error)}`, { cause: error });
  }
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    invalidArgument(`umap: ${label} has an invalid size: ${typeof size === "number" ? size : typeof size} (a whole number of bytes >= 0)`);
  }
  return size;
}

function regionCreateError(result: number, label: string, pageCount: number, pageSize: number): UmapError {
  const what = `umap: ${label} (${pageCount} pages of ${pageSize} bytes)`;
  switch (result) {
    case EOPNOTSUPP:
      return new UmapError(ErrorCode.UNSUPPORTED, `umap: ${label}: ${WRITE_PROTECT_REQUIRED}`);
    case ENOSPC:
      return engineError(result, `${what}: too many regions are open at once (${REGIONS_MAX} at most)`, ErrorCode.UNSUPPORTED);
    case ENOMEM:
      return engineError(result, `${what}: too large to map: the address space or the page table does not fit`, ErrorCode.UNSUPPORTED);
    default:
      return engineError(result, `mapping ${what}`, ErrorCode.INTERNAL);
  }
}
