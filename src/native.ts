/**
 * The only module that loads native code. The main thread compiles csrc/umap.c once with
 * bun:ffi's `cc`; fill workers bind the same compiled functions by address (`linkSymbols`),
 * because every `cc()` call would be a separate copy with its own globals.
 */
import { cc, FFIType, linkSymbols, type FFIFunction, type Pointer } from "bun:ffi";
import { ErrorCode, UmapError } from "./errors.ts";

const { i32, u32, i64, u64, i64_fast, ptr } = FFIType;

const symbols = {
  umap_engine_start: { args: [u64], returns: i64_fast },
  umap_engine_open_mode: { args: [], returns: i32 },
  umap_engine_features: { args: [], returns: i64_fast },
  umap_engine_open_errno: { args: [i32], returns: i32 },
  umap_engine_configure: { args: [u64, u32, u32, u32], returns: i32 },
  umap_engine_stop: { args: [], returns: i32 },
  umap_engine_resident_bytes: { args: [], returns: i64_fast },
  umap_engine_stray_faults: { args: [], returns: i64_fast },
  umap_engine_worker_deaths: { args: [], returns: i64_fast },
  umap_engine_workers: { args: [i32], returns: i32 },
  umap_system_page_size: { args: [], returns: i64_fast },
  umap_region_create: { args: [u64, u64, i64, i32, ptr, u64], returns: i64_fast },
  umap_region_base: { args: [u32], returns: ptr },
  umap_region_generation: { args: [u32], returns: i64_fast },
  umap_region_descriptor: { args: [u32, u32, ptr, u64], returns: i64_fast },
  umap_region_stats: { args: [u32, ptr], returns: i32 },
  umap_region_count_state: { args: [u32, u64, u64, u32], returns: i64_fast },
  umap_region_set_zero_failed_fills: { args: [u32, i32], returns: i32 },
  umap_region_zero_failed_fills: { args: [u32], returns: i32 },
  umap_region_error: { args: [u32, u64, ptr, ptr, u64], returns: i64_fast },
  umap_region_prefetch: { args: [u32, u64, u64], returns: i64_fast },
  umap_region_flush: { args: [u32], returns: i64_fast },
  umap_region_writeback_pending: { args: [u32, u64, u64, ptr, u64], returns: i64_fast },
  umap_region_close_begin: { args: [u32], returns: i64_fast },
  umap_region_inflight: { args: [u32], returns: i64_fast },
  umap_region_release: { args: [u32], returns: i32 },
  umap_ticket_take: { args: [u32, ptr, u64], returns: i64_fast },
  umap_ticket_orphans: { args: [ptr, u64], returns: i64_fast },
  umap_worker_register: { args: [i32], returns: i32 },
  umap_worker_unregister: { args: [i32], returns: i32 },
  umap_worker_next: { args: [i32, ptr], returns: i32 },
  umap_worker_try_next: { args: [i32, ptr], returns: i32 },
  umap_worker_complete: { args: [i32, i32, ptr, u64], returns: i64_fast },
  umap_test_preinstall_zero_page: { args: [u32, u64], returns: i32 },
  umap_fd_dup: { args: [i32], returns: i32 },
  umap_fd_close: { args: [i32], returns: i32 },
} as const satisfies Record<string, FFIFunction>;

type Symbols = typeof symbols;
type NativeFn<F extends FFIFunction> = (...args: any[]) => F["returns"] extends FFIType.ptr ? Pointer | null : number;
export type Native = { [K in keyof Symbols]: NativeFn<Symbols[K]> };
/** Function addresses of the compiled engine, handed to workers (numbers survive postMessage). */
export type NativeAddresses = { [K in keyof Symbols]: number };

/** userfaultfd feature bits the engine uses (UFFD_FEATURE_*). */
export const Feature = { WRITE_PROTECT: 1 << 0, POISON: 1 << 14 } as const;

/** What a worker serves (csrc/umap.c, enum worker_role). */
export const WorkerRole = { FILLER: 0, EVICTOR: 1 } as const;
export type WorkerRole = (typeof WorkerRole)[keyof typeof WorkerRole];

/** What a request asks for (csrc/umap.c, enum request_kind). */
export const RequestKind = { FILL: 0, WRITE: 1, MARKER: 2 } as const;

/** How a failed fill answered its faulting page (csrc/umap.c, enum fill_answer). */
export const FillAnswer = { NONE: 0, POISONED: 1, ZEROED: 2 } as const;

/** Page states as the engine keeps them (csrc/umap.c, enum page_state). */
export const PageState = { EMPTY: 0, FILLING: 1, PRESENT: 2, POISONED: 3 } as const;

/** The order of umap_region_stats() (csrc/umap.c, enum region_stat). */
export const REGION_STAT_FIELDS = [
  "faults",
  "duplicateFaults",
  "fills",
  "fillRequests",
  "readAheadPages",
  "prefetchPages",
  "evictions",
  "residentPages",
  "bytesRead",
  "fillErrors",
  "poisonedPages",
  "zeroedPages",
  "copyRaces",
  "writeFaults",
  "writebacks",
  "bytesWritten",
  "writebackErrors",
  "writebackServes",
  "movedPages",
] as const;

/** The order of umap_worker_next()'s output (csrc/umap.c, enum worker_field). */
export const RequestField = {
  SLOT: 0,
  GENERATION: 1,
  BYTE_OFFSET: 2,
  BYTE_LENGTH: 3,
  STAGING: 4,
  STAGING_BYTES: 5,
  TICKET: 6,
  FAULTED: 7,
  KIND: 8,
  RELEASES: 9,
  COUNT: 10,
} as const;

export const SOURCE_PATH = new URL("../csrc/umap.c", import.meta.url).pathname;

let compiled: { native: Native; addresses: NativeAddresses; library: unknown } | undefined;

/** Compiles the engine (once per process, on the main thread) and returns its functions. */
export function loadNative(): { native: Native; addresses: NativeAddresses } {
  if (!compiled) {
    let library: ReturnType<typeof cc>;
    try {
      library = cc({ source: SOURCE_PATH, symbols });
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const hint = compileErrorHint(message);
      throw new UmapError(ErrorCode.UNSUPPORTED, `cannot compile the fault engine ${SOURCE_PATH}${hint}: ${message}`, {
        cause: error,
      });
    }
    const addresses = {} as Record<string, number>;
    for (const name of Object.keys(symbols)) {
      addresses[name] = Number((library.symbols as unknown as Record<string, { ptr: Pointer }>)[name]!.ptr);
    }
    // Kept for the life of the process: the workers call into this copy by address.
    compiled = { native: library.symbols as unknown as Native, addresses: addresses as NativeAddresses, library };
  }
  return compiled;
}

/**
 * What a compile failure means for the user. TinyCC's own headers (stddef.h, stdarg.h, ...) are
 * written by Bun to the temporary directory before each compile, so their absence means that
 * directory is not writable; a missing linux/ header means the kernel headers are not installed.
 */
function compileErrorHint(message: string): string {
  const missing = /include file '([^']+)' not found/.exec(message)?.[1];
  if (missing === undefined) return "";
  if (/^(stddef|stdarg|stdbool|stdalign|stdnoreturn|float|varargs|tgmath)\.h$/.test(missing)) {
    const tmp = process.env.TMPDIR || "/tmp";
    return `: Bun could not write its C compiler's headers to the temporary directory ${tmp} (set TMPDIR to a directory this user can write)`;
  }
  if (missing.startsWith("linux/") || missing.startsWith("asm/")) {
    return ": the Linux kernel headers are missing (install linux-libc-dev on Debian or Ubuntu, kernel-headers on Fedora)";
  }
  return `: the C header ${missing} is missing (install the C library's development headers, libc6-dev on Debian or Ubuntu)`;
}

/** Binds the engine's functions by address, in a worker thread. */
export function linkNative(addresses: NativeAddresses): Native {
  const definitions = {} as Record<string, FFIFunction & { ptr: Pointer }>;
  for (const [name, definition] of Object.entries(symbols)) {
    definitions[name] = { ...definition, ptr: addresses[name as keyof Symbols] as unknown as Pointer } as FFIFunction & {
      ptr: Pointer;
    };
  }
  return linkSymbols(definitions).symbols as unknown as Native;
}
