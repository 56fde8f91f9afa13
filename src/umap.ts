import { Engine } from "./engine.ts";
import { ErrorCode, UmapError, engineError, invalidArgument } from "./errors.ts";
import { resolveOptions, type UmapOptions } from "./options.ts";
import { Region } from "./region.ts";
import { isStore, isStoreDescriptor, openStore, storeLabel, type Store, type StoreDescriptor, type StoreInstance } from "./store.ts";
import FileStore from "../stores/file.ts";

const ENOSPC = -28;

/**
 * Maps a store into memory: a path (a local file), a store object, or a descriptor from
 * defineStore(). Pages are filled on demand by the fill workers.
 */
export async function umap(target: string | Store | StoreDescriptor, options?: UmapOptions): Promise<Region> {
  const { engine: engineSettings, region: regionSettings, explicit } = resolveOptions(options, Engine.systemPageSize());
  if (regionSettings.writable) {
    throw new UmapError(ErrorCode.UNSUPPORTED, "writable regions are not supported yet: map with writable: false");
  }

  let store: StoreInstance;
  let descriptor: StoreDescriptor;
  let label: string;
  let ownsStore = true;
  if (typeof target === "string") {
    const file = new FileStore(target, { writable: regionSettings.writable });
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
    const engine = await Engine.acquire(engineSettings, explicit);
    const { pageSize } = regionSettings;
    const pageCount = Math.ceil(store.size / pageSize);
    const json = new TextEncoder().encode(JSON.stringify(descriptor));
    const slot = engine.native.umap_region_create(pageCount, pageSize, regionSettings.readAhead, json, json.length);
    if (slot < 0) {
      await engine.stopIfIdle();
      const what = `mapping ${label} (${pageCount} pages of ${pageSize} bytes)`;
      throw engineError(slot, what, slot === ENOSPC ? ErrorCode.UNSUPPORTED : ErrorCode.INTERNAL);
    }
    engine.addRegion(slot, pageSize);
    // A store the caller passed in stays theirs to close; one umap() opened is closed with the region.
    return new Region({ engine, slot, label, byteLength: store.size, pageSize, ownedStore: ownsStore ? store : undefined });
  } catch (error) {
    if (ownsStore) await store.close?.();
    throw error;
  }
}
