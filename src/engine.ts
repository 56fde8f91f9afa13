/**
 * The engine on the main thread: starts the C fault engine and its fill workers on the first
 * umap(), keeps the settings every region shares, turns prefetch tickets into promises, and
 * stops everything when the last region is released, so a script that closes its regions
 * exits on its own.
 */
import { Worker } from "node:worker_threads";
import { ErrorCode, UmapError, engineError, errnoName } from "./errors.ts";
import type { FillWorkerData, FillWorkerMessage } from "./fill-worker.ts";
import { loadNative, WorkerRole, type Native } from "./native.ts";
import type { EngineSettings, ExplicitSettings } from "./options.ts";

/** How long a new worker may take to load before umap() gives up on it. */
const WORKER_START_TIMEOUT_MS = 30_000;
/** How long stopping waits for a worker to leave on its own before terminating it. */
const WORKER_EXIT_TIMEOUT_MS = 5_000;
/**
 * Workers that die (a store that calls process.exit(), an uncaught error in store code) are
 * replaced, up to this many times in one run of the engine: a store that kills every worker it
 * runs in must not make the process spawn threads forever.
 */
const WORKER_REPLACEMENTS_MAX = 32;
/** How often pending prefetches look for tickets that a dying worker could not report. */
const ORPHAN_POLL_MS = 20;

const OPEN_MODES = ["none", "userfaultfd(2)", "/dev/userfaultfd", "userfaultfd(2) user-mode-only"] as const;

/** Said once per engine start where only user-mode-only userfaultfd could be opened. */
const USER_MODE_ONLY_WARNING =
  "bun-umap: this process may only use user-mode-only userfaultfd (it is not root, " +
  "vm.unprivileged_userfaultfd is 0 and /dev/userfaultfd is not open to it). Reads from JavaScript work, " +
  "but a system call given a view of pages not yet filled (fs.writeSync(fd, region.view(...)), a socket " +
  "write) fails with EFAULT: await region.prefetch(byteOffset, byteLength) the range first, or allow " +
  "kernel-mode faults with `sysctl vm.unprivileged_userfaultfd=1` or read-write access to /dev/userfaultfd.";

interface Ticket {
  resolve(): void;
  reject(error: Error): void;
  describe: string;
}

export class Engine {
  static #current: Engine | undefined;
  static #starting: Promise<Engine> | undefined;

  readonly native: Native;
  /** userfaultfd features granted (UFFD_FEATURE_* bits). */
  readonly features: number;
  /** How the userfaultfd was opened. */
  readonly openMode: (typeof OPEN_MODES)[number];
  readonly systemPageSize: number;
  settings: EngineSettings;
  readonly #workers: Worker[] = [];
  /** The role of each worker, to replace one that dies with one of the same kind. */
  readonly #roles = new Map<Worker, WorkerRole>();
  #replacements = 0;
  #orphanPoll: ReturnType<typeof setInterval> | undefined;
  readonly #orphans = new Uint32Array(64);
  /** Evictors start with the first writable region: read-only use never pays for them. */
  #evictorCount = 0;
  readonly #tickets = new Map<number, Ticket>();
  /** Page size of each live region, by slot. */
  readonly #regionPageSizes = new Map<number, number>();
  /** umap() calls holding the engine for a region they are creating (see acquire()). */
  #holds = 0;
  readonly #ticketError = new Uint8Array(512);
  #stopping: Promise<void> | undefined;

  private constructor(native: Native, features: number, settings: EngineSettings) {
    this.native = native;
    this.features = features;
    this.openMode = OPEN_MODES[native.umap_engine_open_mode()] ?? "none";
    this.systemPageSize = native.umap_system_page_size();
    this.settings = settings;
  }

  /** The system page size, without starting the engine. */
  static systemPageSize(): number {
    return loadNative().native.umap_system_page_size();
  }

  /**
   * The running engine, started with `settings` if it was not running, for a new region with
   * pages of pageSize bytes. A running engine takes the settings the caller chose explicitly:
   * the buffer is resized and the pools grow. The engine is held for the new region (it does
   * not stop, even if its last region closes meanwhile) until the caller calls addRegion() or
   * release().
   */
  static async acquire(settings: EngineSettings, explicit: ExplicitSettings, pageSize: number): Promise<Engine> {
    for (;;) {
      while (Engine.#starting) await Engine.#starting.catch(() => {});
      const running = Engine.#current;
      if (running) {
        running.#holds++;
        try {
          await running.#reconfigure(settings, explicit, pageSize);
        } catch (error) {
          await running.release();
          throw error;
        }
        return running;
      }
      if (Engine.#starting) continue;
      Engine.#starting = Engine.#start(settings);
      try {
        const engine = await Engine.#starting;
        engine.#holds++;
        return engine;
      } finally {
        Engine.#starting = undefined;
      }
    }
  }

  static async #start(settings: EngineSettings): Promise<Engine> {
    const { native, addresses } = loadNative();
    const features = native.umap_engine_start(featureMask());
    if (features < 0) throw unsupportedError(native, features);
    const engine = new Engine(native, features, settings);
    if (engine.openMode === "userfaultfd(2) user-mode-only") process.emitWarning(USER_MODE_ONLY_WARNING, { code: "BUN_UMAP_USER_MODE_ONLY" });
    try {
      engine.#configure(settings);
      await engine.#addWorkers(settings.fillers, { addresses, role: WorkerRole.FILLER });
    } catch (error) {
      await engine.#shutdown();
      throw error;
    }
    Engine.#current = engine;
    return engine;
  }

  async #reconfigure(settings: EngineSettings, explicit: ExplicitSettings, pageSize: number): Promise<void> {
    const next: EngineSettings = { ...this.settings };
    for (const key of Object.keys(explicit) as (keyof EngineSettings)[]) {
      if (explicit[key]) next[key] = settings[key];
    }
    // The shared buffer must always hold a page of every region, or a fault would wait forever.
    const largest = Math.max(pageSize, ...this.#regionPageSizes.values());
    if (next.bufferBytes < largest) {
      throw new UmapError(
        ErrorCode.INVALID_ARGUMENT,
        explicit.bufferBytes
          ? `option bufferSize (${next.bufferBytes} bytes) is smaller than a page of an open region (${largest} bytes)`
          : `pageSize ${largest} is larger than the page buffer the open regions share (${next.bufferBytes} bytes): pass a larger bufferSize`,
      );
    }
    this.#configure(next);
    const fillerCount = this.#workers.length - this.#evictorCount;
    if (next.fillers > fillerCount) {
      await this.#addWorkers(next.fillers - fillerCount, { addresses: loadNative().addresses, role: WorkerRole.FILLER });
    }
    this.settings = { ...next, fillers: Math.max(next.fillers, fillerCount) };
    if (this.#evictorCount > 0) await this.startEvictors();
  }

  /** Starts evictor workers, up to `settings.evictors` (writable regions need them). */
  async startEvictors(): Promise<void> {
    const missing = this.settings.evictors - this.#evictorCount;
    if (missing <= 0) return;
    this.#evictorCount += missing;
    await this.#addWorkers(missing, { addresses: loadNative().addresses, role: WorkerRole.EVICTOR });
  }

  #configure(settings: EngineSettings): void {
    const result = this.native.umap_engine_configure(
      settings.bufferBytes,
      settings.highWaterPercent,
      settings.lowWaterPercent,
      settings.maxFaultEvents,
    );
    if (result < 0) throw engineError(result, "configuring the page buffer", ErrorCode.INVALID_ARGUMENT);
  }

  async #addWorkers(count: number, data: FillWorkerData): Promise<void> {
    const started: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const worker = new Worker(new URL("./fill-worker.ts", import.meta.url), { workerData: data });
      this.#workers.push(worker);
      this.#roles.set(worker, data.role);
      started.push(this.#watchWorker(worker));
    }
    await Promise.all(started);
  }

  /** Resolves once the worker has registered with the engine; routes its later messages. */
  #watchWorker(worker: Worker): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new UmapError(ErrorCode.INTERNAL, `a fill worker did not start within ${WORKER_START_TIMEOUT_MS} ms`));
      }, WORKER_START_TIMEOUT_MS);
      worker.on("message", (message: FillWorkerMessage) => {
        if (message.type === "ready") {
          clearTimeout(timer);
          worker.unref();
          resolve();
        } else if (message.type === "failed") {
          clearTimeout(timer);
          reject(new UmapError(ErrorCode.INTERNAL, `a fill worker could not start: ${message.error}`));
        } else if (message.type === "ticket") {
          this.#settleTicket(message.ticket);
        }
      });
      worker.on("error", (error: Error) => {
        clearTimeout(timer);
        reject(new UmapError(ErrorCode.INTERNAL, `a fill worker failed: ${error.message}`, { cause: error }));
        if (!this.#stopping) process.stderr.write(`bun-umap: a worker failed: ${error.message}\n`);
      });
      worker.once("exit", () => this.#workerExited(worker));
    });
  }

  /**
   * A worker ended. While the engine runs, that is a death: the engine has already handed its
   * request to another worker (csrc/umap.c, "worker deaths"); here a replacement is started.
   */
  #workerExited(worker: Worker): void {
    const role = this.#roles.get(worker);
    this.#roles.delete(worker);
    const index = this.#workers.indexOf(worker);
    if (index >= 0) this.#workers.splice(index, 1);
    if (this.#stopping || role === undefined) return;
    if (role === WorkerRole.EVICTOR) this.#evictorCount--;
    if (this.#replacements >= WORKER_REPLACEMENTS_MAX) {
      process.stderr.write(`bun-umap: a worker died; ${WORKER_REPLACEMENTS_MAX} have been replaced already, so this one is not\n`);
      return;
    }
    this.#replacements++;
    process.stderr.write(`bun-umap: a ${role === WorkerRole.EVICTOR ? "write-back" : "fill"} worker died; starting a replacement\n`);
    if (role === WorkerRole.EVICTOR) this.#evictorCount++;
    this.#addWorkers(1, { addresses: loadNative().addresses, role }).catch((error: unknown) => {
      if (role === WorkerRole.EVICTOR) this.#evictorCount--;
      // The engine stopping meanwhile needs no replacement.
      if (!this.#stopping) process.stderr.write(`bun-umap: the replacement worker did not start: ${(error as Error).message}\n`);
    });
  }

  /** Records a new region, ending the hold its acquire() took. */
  addRegion(slot: number, pageSize: number): void {
    this.#regionPageSizes.set(slot, pageSize);
    this.#holds--;
  }

  /** Ends a hold from acquire() that did not become a region; stops the engine if idle. */
  async release(): Promise<void> {
    this.#holds--;
    await this.#stopIfIdle();
  }

  /** Forgets a released region; the last one stops the engine. */
  async removeRegion(slot: number): Promise<void> {
    this.#regionPageSizes.delete(slot);
    await this.#stopIfIdle();
  }

  async #stopIfIdle(): Promise<void> {
    if (this.#regionPageSizes.size === 0 && this.#holds === 0 && Engine.#current === this) {
      Engine.#current = undefined;
      await this.#shutdown();
    }
  }

  /** A promise for a prefetch ticket, settled when its last request completes. */
  waitForTicket(ticket: number, describe: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#tickets.set(ticket, { resolve, reject, describe });
      // Pending prefetches keep the process alive: the worker that will report them does.
      if (this.#tickets.size === 1) this.#workers[0]?.ref();
      // A ticket whose last request died with its worker is reported by no one: look for it.
      this.#orphanPoll ??= setInterval(() => this.#settleOrphans(), ORPHAN_POLL_MS);
    });
  }

  #settleOrphans(): void {
    const count = this.native.umap_ticket_orphans(this.#orphans, this.#orphans.length);
    for (let i = 0; i < count; i++) this.#settleTicket(this.#orphans[i]!);
    if (this.#tickets.size === 0) {
      clearInterval(this.#orphanPoll);
      this.#orphanPoll = undefined;
    }
  }

  #settleTicket(ticket: number): void {
    const length = this.native.umap_ticket_take(ticket, this.#ticketError, this.#ticketError.length);
    const error = length > 0 ? new TextDecoder().decode(this.#ticketError.subarray(0, length)) : null;
    const waiter = this.#tickets.get(ticket);
    if (!waiter) return;
    this.#tickets.delete(ticket);
    if (this.#tickets.size === 0) {
      this.#workers[0]?.unref();
      clearInterval(this.#orphanPoll);
      this.#orphanPoll = undefined;
    }
    if (error === null) waiter.resolve();
    else waiter.reject(fillFailure(waiter.describe, error));
  }

  #shutdown(): Promise<void> {
    this.#stopping ??= (async () => {
      const stopped = this.native.umap_engine_stop();
      if (stopped < 0 && stopped !== -114 /* EALREADY */) {
        throw engineError(stopped, "stopping the fault engine");
      }
      for (const [ticket, waiter] of this.#tickets) {
        this.#tickets.delete(ticket);
        waiter.reject(new UmapError(ErrorCode.CLOSED, `${waiter.describe}: the region was closed`));
      }
      await Promise.all(this.#workers.map((worker) => waitForExit(worker)));
      this.#workers.length = 0;
    })();
    return this.#stopping;
  }
}

/**
 * The error a prefetch rejects with when a fill failed. The worker reports the store's error as
 * text ("cannot fill <store> at byte offset N (M bytes): <code>: <message>"); it becomes the
 * cause, and a store's ERR_UMAP_CORRUPT (stored data failed a check) keeps its code, since
 * that is not an I/O failure a retry could mend.
 */
function fillFailure(describe: string, text: string): UmapError {
  const storeCode = /\(\d+ bytes\): (ERR_UMAP_[A-Z_]+): /.exec(text)?.[1];
  const cause = Object.assign(new Error(text), storeCode === undefined ? {} : { code: storeCode });
  const code = storeCode === ErrorCode.CORRUPT ? ErrorCode.CORRUPT : ErrorCode.STORE;
  return new UmapError(code, `${describe}: ${text}`, { cause });
}

function waitForExit(worker: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      void worker.terminate().finally(resolve);
    }, WORKER_EXIT_TIMEOUT_MS);
    worker.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    worker.unref();
  });
}

/**
 * userfaultfd features to leave off, from BUN_UMAP_MASK_FEATURES (UFFD_FEATURE_* bits, hex or
 * decimal): a testing aid that makes this kernel stand in for an older one.
 */
function featureMask(): number {
  const raw = process.env.BUN_UMAP_MASK_FEATURES;
  if (raw === undefined || raw === "") return 0;
  const mask = Number(raw);
  if (!Number.isSafeInteger(mask) || mask < 0) {
    throw new UmapError(ErrorCode.INVALID_ARGUMENT, `environment variable BUN_UMAP_MASK_FEATURES must be a bit mask, got ${JSON.stringify(raw)}`);
  }
  return mask;
}

function unsupportedError(native: Native, result: number): UmapError {
  const tried = ["userfaultfd(2)", "/dev/userfaultfd", "userfaultfd(2) with UFFD_USER_MODE_ONLY"]
    .map((way, i) => {
      const errno = native.umap_engine_open_errno(i);
      return errno ? `${way}: ${errnoName(errno)}` : undefined;
    })
    .filter(Boolean)
    .join(", ");
  const advice =
    result === -38 /* ENOSYS */
      ? "this kernel was built without userfaultfd (CONFIG_USERFAULTFD); bun-umap needs Linux 5.7 or newer with it"
      : "run as root, or allow unprivileged use with `sysctl vm.unprivileged_userfaultfd=1`, or give this user " +
        "read-write access to /dev/userfaultfd (Linux 6.1+); in a container, also allow the userfaultfd syscall " +
        "in its seccomp profile (see the README's Requirements)";
  return new UmapError(ErrorCode.UNSUPPORTED, `userfaultfd is not available (${tried || errnoName(result)}): ${advice}`, {
    cause: Object.assign(new Error(errnoName(result)), { errno: result }),
  });
}
