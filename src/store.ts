/**
 * Stores: where a region's pages come from. Fill workers run stores in their own threads, so a
 * store is known to the engine by a descriptor (a module and JSON options) from which every
 * worker constructs its own instance. Built-in stores describe themselves; a user's store is
 * described with defineStore().
 */
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { ErrorCode, UmapError, describeError, invalidArgument } from "./errors.ts";

/** How a worker constructs a store: `new (await import(module)).default(options)`. */
export interface StoreDescriptor {
  /** A file: URL (or absolute path) of a module whose default export is the store class. */
  readonly module: string;
  /** Given to the constructor; must survive JSON. */
  readonly options?: unknown;
}

/** What a store instance offers. Only `size` and `read` are required. */
export interface StoreInstance {
  /** Bytes. */
  readonly size: number;
  /** Fills `target` completely with the bytes at `byteOffset`. */
  read(byteOffset: number, target: Uint8Array): void | Promise<void>;
  write?(byteOffset: number, source: Uint8Array): void | Promise<void>;
  flush?(): void | Promise<void>;
  close?(): void | Promise<void>;
  /** Optional asynchronous set-up, awaited once after construction. */
  open?(): void | Promise<void>;
  /**
   * Optional: a promise that settles when the store's own background work (read-ahead fetches)
   * has, or undefined when it has none. While one is pending the worker polls the engine for
   * requests instead of sleeping in it, so the store's fetches keep progressing.
   */
  pending?(): Promise<void> | undefined;
}

/** A store object that can be passed to umap() directly: built-in stores are. */
export interface Store extends StoreInstance {
  /** How fill workers construct their own instance of this store. */
  describe(): StoreDescriptor;
  /** Names the store in messages: "FileStore /data/x". */
  readonly label: string;
  /** False for a store opened read-only. */
  readonly writable?: boolean;
}

/** A user's own store: `module`'s default export is constructed with `options` in each worker. */
export function defineStore(module: string | URL, options?: unknown): StoreDescriptor {
  let url: string;
  if (module instanceof URL) {
    url = module.href;
  } else if (typeof module === "string" && module.length > 0) {
    url = /^[a-z][a-z0-9+.-]*:/i.test(module) ? module : pathToFileURL(isAbsolute(module) ? module : resolve(module)).href;
  } else {
    invalidArgument(`defineStore: module must be a path or URL, got ${typeof module === "string" ? '""' : typeof module}`);
  }
  const problem = jsonProblem(options, "options", new Set());
  if (problem) invalidArgument(`defineStore: options for ${url} must survive JSON, as each worker gets a copy: ${problem}`);
  // The caller's object is copied, so what umap() opens on this thread is what workers get.
  return Object.freeze({ module: url, options: options === undefined ? undefined : JSON.parse(JSON.stringify(options)) });
}

/** Why value would not come out of JSON as it went in, or undefined if it would. */
function jsonProblem(value: unknown, path: string, seen: Set<object>): string | undefined {
  if (value === null || typeof value === "string" || typeof value === "boolean" || value === undefined) return undefined;
  if (typeof value === "number") return Number.isFinite(value) ? undefined : `${path} is ${value}`;
  if (typeof value !== "object") return `${path} is a ${typeof value}`;
  if (seen.has(value)) return `${path} refers back to itself`;
  const prototype = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && prototype !== Object.prototype && prototype !== null) {
    return `${path} is a ${value.constructor?.name ?? "class instance"}, not a plain object`;
  }
  seen.add(value);
  for (const [key, item] of Object.entries(value)) {
    const problem = jsonProblem(item, Array.isArray(value) ? `${path}[${key}]` : `${path}.${key}`, seen);
    if (problem) return problem;
  }
  seen.delete(value);
  return undefined;
}

export function isStore(value: unknown): value is Store {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as Store).describe === "function" &&
    typeof (value as Store).read === "function"
  );
}

export function isStoreDescriptor(value: unknown): value is StoreDescriptor {
  return typeof value === "object" && value !== null && typeof (value as StoreDescriptor).module === "string";
}

/** Constructs and opens a store from its descriptor; checks it has what a store needs. */
export async function openStore(descriptor: StoreDescriptor): Promise<StoreInstance> {
  let exports: Record<string, unknown>;
  try {
    exports = await import(descriptor.module);
  } catch (error) {
    throw new UmapError(ErrorCode.NOT_FOUND, `cannot load store module ${descriptor.module}: ${describeError(error)}`, {
      cause: error,
    });
  }
  const StoreClass = exports.default;
  if (typeof StoreClass !== "function") {
    invalidArgument(`store module ${descriptor.module} has no default export class`);
  }
  let store: StoreInstance;
  try {
    store = new (StoreClass as new (options: unknown) => StoreInstance)(descriptor.options);
    if (typeof store.open === "function") await store.open();
  } catch (error) {
    if (error instanceof UmapError) throw error;
    throw new UmapError(ErrorCode.STORE, `store ${descriptor.module} failed to open: ${describeError(error)}`, {
      cause: error,
    });
  }
  if (typeof store.read !== "function") invalidArgument(`store ${descriptor.module} has no read(offset, target) method`);
  if (!Number.isSafeInteger(store.size) || store.size < 0) {
    invalidArgument(`store ${descriptor.module} has an invalid size: ${String(store.size)}`);
  }
  return store;
}

/** Names a store in messages. */
export function storeLabel(store: StoreInstance, descriptor: StoreDescriptor): string {
  return (store as Partial<Store>).label ?? descriptor.module;
}

/** Closes a store, wrapping its failure. */
export async function closeStore(store: StoreInstance, label: string): Promise<void> {
  try {
    await store.close?.();
  } catch (error) {
    throw new UmapError(ErrorCode.STORE, `closing ${label} failed: ${describeError(error)}`, { cause: error });
  }
}
