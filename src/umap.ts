import { Engine } from "./engine.ts";
import { ErrorCode, UmapError, engineError, invalidArgument } from "./errors.ts";
import { Feature } from "./native.ts";
import { resolveOptions, type UmapOptions } from "./options.ts";
import { Region } from "./region.ts";
import { isStore, isStoreDescriptor, openStore, storeLabel, type Store, type StoreDescriptor, type StoreInstance } from "./store.ts";
import FileStore from "../stores/file.ts";

const ENOSPC = -28;
const EOPNOTSUPP = -95;
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
  if (typeof target === "string") {
    const file = new FileStore(target, { writable });
    [store, descriptor, label] = [file, file.describe(), file.label];
  } else if (isStore(target)) {
    [store, descriptor, label] = [target, target.describe(), target.label];
    ownsStore = false;
  } else if (isStoreDescriptor(target)) {
    descriptor = target;
    store = await openStore(target);
    label = storeLabel(store, target);
  } else {
    invalidArgument(`umap: target must be a path, a store or a store descriptor, got ${target === null ? "null" : typeof target}`);
  }

  try {
    if (store.size === 0) invalidArgument(`umap: ${label} is empty: there is nothing to map`);
    if (writable && (typeof store.write !== "function" || (store as Partial<Store>).writable === false)) {
      throw new UmapError(
        ErrorCode.UNSUPPORTED,
        `umap: ${label} is read-only, so it cannot be mapped with writable: true` +
          (store instanceof FileStore ? " (open it with new FileStore(path, { writable: true }))" : ""),
      );
    }
    const engine = await Engine.acquire(engineSettings, explicit);
    if (writable && !(engine.features & Feature.WRITE_PROTECT)) {
      await engine.stopIfIdle();
      throw new UmapError(ErrorCode.UNSUPPORTED, `umap: ${label}: ${WRITE_PROTECT_REQUIRED}`);
    }
    const pageCount = Math.ceil(store.size / pageSize);
    const json = new TextEncoder().encode(JSON.stringify(descriptor));
    const slot = engine.native.umap_region_create(pageCount, pageSize, regionSettings.readAhead, writable ? 1 : 0, json, json.length);
    if (slot < 0) {
      await engine.stopIfIdle();
      if (slot === EOPNOTSUPP) throw new UmapError(ErrorCode.UNSUPPORTED, `umap: ${label}: ${WRITE_PROTECT_REQUIRED}`);
      const what = `mapping ${label} (${pageCount} pages of ${pageSize} bytes)`;
      throw engineError(slot, what, slot === ENOSPC ? ErrorCode.UNSUPPORTED : ErrorCode.INTERNAL);
    }
    engine.addRegion(slot, pageSize);
    if (writable) await engine.startEvictors();
    // A store the caller passed in stays theirs to close; one umap() opened is closed with the region.
    return new Region({ engine, slot, label, byteLength: store.size, pageSize, writable, store, ownsStore });
  } catch (error) {
    if (ownsStore) await store.close?.();
    throw error;
  }
}
