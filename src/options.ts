/**
 * Options of umap(), with UMap's environment variables as defaults. Options win over the
 * environment; invalid values of either are rejected with a message naming the option or
 * variable, never clamped.
 */
import { freemem } from "node:os";
import { invalidArgument, describeValue } from "./errors.ts";

export interface UmapOptions {
  /** Bytes per page: a power of two, a multiple of the system page. `UMAP_PAGESIZE`. */
  pageSize?: number;
  /** Bytes of the page buffer shared by all regions. `UMAP_BUFSIZE` (in pages, as in UMap). */
  bufferSize?: number;
  /** Map for writing too. Default false. */
  writable?: boolean;
  /** Fill worker threads. `UMAP_PAGE_FILLERS`. */
  fillers?: number;
  /** Write-back worker threads. `UMAP_PAGE_EVICTORS`. */
  evictors?: number;
  /** Percent of the buffer above which eviction starts. `UMAP_EVICT_HIGH_WATER_THRESHOLD`. */
  highWater?: number;
  /** Percent of the buffer eviction brings usage down to. `UMAP_EVICT_LOW_WATER_THRESHOLD`. */
  lowWater?: number;
  /** Pages read after each faulting page; unset means adaptive. `UMAP_READ_AHEAD`. */
  readAhead?: number;
  /** Fault messages the engine reads at once. `UMAP_MAX_FAULT_EVENTS`. */
  maxFaultEvents?: number;
  /**
   * What the access that needed a page gets when its fill fails for good: "sigbus" (default,
   * as a kernel mapping of a failing file) or "zero" (the page reads as zeros; the error is in
   * region.errors()).
   */
  onFillError?: FillErrorMode;
}

export type FillErrorMode = "sigbus" | "zero";

/** Settings of the whole engine: shared by every region of the process. */
export interface EngineSettings {
  bufferBytes: number;
  fillers: number;
  evictors: number;
  highWaterPercent: number;
  lowWaterPercent: number;
  maxFaultEvents: number;
}

/** Settings of one region. */
export interface RegionSettings {
  pageSize: number;
  writable: boolean;
  /** Pages, or -1 for adaptive read-ahead. */
  readAhead: number;
  onFillError: FillErrorMode;
}

/** Which engine settings the caller chose (an option or a variable) rather than defaulted. */
export type ExplicitSettings = Partial<Record<keyof EngineSettings, boolean>>;

export const DEFAULT_PAGE_SIZE = 64 * 1024;
export const DEFAULT_HIGH_WATER_PERCENT = 90;
export const DEFAULT_LOW_WATER_PERCENT = 70;
export const DEFAULT_MAX_FAULT_EVENTS = 256;
export const MAX_FAULT_EVENTS_LIMIT = 4096;
export const MAX_WORKERS = 64;
/** The default buffer takes this share of the memory free when the engine starts. */
const DEFAULT_BUFFER_SHARE = 0.25;
const MAX_PAGE_SIZE = 1024 * 1024 * 1024;

const KNOWN_OPTIONS = new Set([
  "pageSize",
  "bufferSize",
  "writable",
  "fillers",
  "evictors",
  "highWater",
  "lowWater",
  "readAhead",
  "maxFaultEvents",
  "onFillError",
]);

type Env = Record<string, string | undefined>;

/** A whole number from an option or an environment variable, checked against [min, max]. */
function integerSetting(
  optionName: string,
  optionValue: unknown,
  envName: string,
  env: Env,
  min: number,
  max: number,
): { value: number; scale: "option" | "env" } | undefined {
  if (optionValue !== undefined) {
    if (typeof optionValue !== "number" || !Number.isSafeInteger(optionValue)) {
      invalidArgument(`option ${optionName} must be a whole number, got ${describeValue(optionValue)}`);
    }
    if (optionValue < min || optionValue > max) {
      invalidArgument(`option ${optionName} must be from ${min} to ${max}, got ${optionValue}`);
    }
    return { value: optionValue, scale: "option" };
  }
  const raw = env[envName];
  if (raw === undefined || raw === "") return undefined;
  if (!/^\s*\d+\s*$/.test(raw)) {
    invalidArgument(`environment variable ${envName} must be a whole number, got ${JSON.stringify(raw)}`);
  }
  const value = Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    invalidArgument(`environment variable ${envName} must be from ${min} to ${max}, got ${raw.trim()}`);
  }
  return { value, scale: "env" };
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isSafeInteger(n) && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

export function defaultWorkerCount(): number {
  return Math.min(4, Math.max(2, navigator.hardwareConcurrency || 2));
}

/**
 * Reads options and environment into settings. Throws ERR_UMAP_INVALID_ARGUMENT naming the
 * option or variable at fault.
 */
export function resolveOptions(
  options: UmapOptions | undefined,
  systemPageSize: number,
  env: Env = process.env,
): { engine: EngineSettings; region: RegionSettings; explicit: ExplicitSettings } {
  if (options !== undefined && (options === null || typeof options !== "object" || Array.isArray(options))) {
    invalidArgument(`options must be an object, got ${describeValue(options)}`);
  }
  const given = (options ?? {}) as Record<string, unknown>;
  for (const name of Object.keys(given)) {
    if (!KNOWN_OPTIONS.has(name)) invalidArgument(`unknown option ${name}`);
  }

  const pageSizeSetting = integerSetting("pageSize", given.pageSize, "UMAP_PAGESIZE", env, 1, MAX_PAGE_SIZE);
  const pageSize = pageSizeSetting?.value ?? Math.max(DEFAULT_PAGE_SIZE, systemPageSize);
  const pageSizeSource = pageSizeSetting?.scale === "env" ? "environment variable UMAP_PAGESIZE" : "option pageSize";
  if (!isPowerOfTwo(pageSize)) invalidArgument(`${pageSizeSource} must be a power of two, got ${pageSize}`);
  if (pageSize < systemPageSize) {
    invalidArgument(`${pageSizeSource} must be at least the system page size (${systemPageSize}), got ${pageSize}`);
  }

  let bufferBytes: number;
  let bufferExplicit = true;
  if (given.bufferSize !== undefined) {
    bufferBytes = integerSetting("bufferSize", given.bufferSize, "", env, 1, Number.MAX_SAFE_INTEGER)!.value;
  } else {
    const pages = integerSetting("bufferSize", undefined, "UMAP_BUFSIZE", env, 1, 2 ** 40);
    if (pages) {
      bufferBytes = pages.value * pageSize;
    } else {
      bufferExplicit = false;
      const share = Math.floor(freemem() * DEFAULT_BUFFER_SHARE);
      bufferBytes = Math.max(pageSize * 64, share - (share % pageSize));
    }
  }
  if (bufferBytes < pageSize) {
    invalidArgument(`option bufferSize (${bufferBytes} bytes) must hold at least one page (${pageSize} bytes)`);
  }

  if (given.writable !== undefined && typeof given.writable !== "boolean") {
    invalidArgument(`option writable must be a boolean, got ${describeValue(given.writable)}`);
  }

  const fillers = integerSetting("fillers", given.fillers, "UMAP_PAGE_FILLERS", env, 1, MAX_WORKERS);
  const evictors = integerSetting("evictors", given.evictors, "UMAP_PAGE_EVICTORS", env, 1, MAX_WORKERS);
  const high = integerSetting("highWater", given.highWater, "UMAP_EVICT_HIGH_WATER_THRESHOLD", env, 1, 100);
  const low = integerSetting("lowWater", given.lowWater, "UMAP_EVICT_LOW_WATER_THRESHOLD", env, 0, 100);
  const highWaterPercent = high?.value ?? DEFAULT_HIGH_WATER_PERCENT;
  const lowWaterPercent = low?.value ?? Math.min(DEFAULT_LOW_WATER_PERCENT, highWaterPercent);
  if (lowWaterPercent > highWaterPercent) {
    invalidArgument(`low water mark (${lowWaterPercent}%) must not be above the high water mark (${highWaterPercent}%)`);
  }
  if (given.onFillError !== undefined && given.onFillError !== "sigbus" && given.onFillError !== "zero") {
    invalidArgument(`option onFillError must be "sigbus" or "zero", got ${describeValue(given.onFillError)}`);
  }
  // The engine answers with a zero page that is not write-protected, so a write to it would
  // never fault, never be marked dirty and never reach the store: lost without a word.
  if (given.onFillError === "zero" && given.writable === true) {
    invalidArgument(
      `option onFillError: "zero" cannot be combined with writable: true: a page answered with zeros is not write-protected, ` +
        `so writes to it would never reach the store; map writable regions with onFillError: "sigbus" (the default)`,
    );
  }
  const readAhead = integerSetting("readAhead", given.readAhead, "UMAP_READ_AHEAD", env, 0, 2 ** 32);
  const events = integerSetting(
    "maxFaultEvents",
    given.maxFaultEvents,
    "UMAP_MAX_FAULT_EVENTS",
    env,
    1,
    MAX_FAULT_EVENTS_LIMIT,
  );

  return {
    engine: {
      bufferBytes,
      fillers: fillers?.value ?? defaultWorkerCount(),
      evictors: evictors?.value ?? defaultWorkerCount(),
      highWaterPercent,
      lowWaterPercent,
      maxFaultEvents: events?.value ?? DEFAULT_MAX_FAULT_EVENTS,
    },
    region: {
      pageSize,
      writable: given.writable === true,
      readAhead: readAhead?.value ?? -1,
      onFillError: (given.onFillError as FillErrorMode | undefined) ?? "sigbus",
    },
    explicit: {
      bufferBytes: bufferExplicit,
      fillers: fillers !== undefined,
      evictors: evictors !== undefined,
      highWaterPercent: high !== undefined,
      lowWaterPercent: low !== undefined,
      maxFaultEvents: events !== undefined,
    },
  };
}
