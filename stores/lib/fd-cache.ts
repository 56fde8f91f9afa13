/**
 * A bounded set of open file descriptors, least recently used closed first, so a store over
 * thousands of files never holds more than `limit` of them. Each worker's store instance has its
 * own and uses it from its one thread, so a descriptor is never closed under a read in flight.
 */
import { closeSync, openSync, constants as fs } from "node:fs";

export interface FdCacheOptions {
  /** Descriptors kept open at most (1 or more). */
  limit: number;
  /** Open O_RDWR instead of O_RDONLY. */
  writable: boolean;
  /** Refuse symbolic links (O_NOFOLLOW): for files the store names itself. */
  noFollow: boolean;
}

export class FdCache {
  readonly #limit: number;
  readonly #flags: number;
  /** path -> fd, in order of last use (a Map iterates in insertion order). */
  readonly #open = new Map<string, number>();

  constructor(options: FdCacheOptions) {
    if (!Number.isSafeInteger(options.limit) || options.limit < 1) {
      throw new RangeError(`descriptor limit must be a whole number >= 1, got ${options.limit}`);
    }
    this.#limit = options.limit;
    this.#flags = (options.writable ? fs.O_RDWR : fs.O_RDONLY) | (options.noFollow ? fs.O_NOFOLLOW : 0);
  }

  /** The descriptor of path, opened if need be. Undefined if the file does not exist; other failures throw. */
  get(path: string): number | undefined {
    const cached = this.#open.get(path);
    if (cached !== undefined) {
      // Move to the most recently used end.
      this.#open.delete(path);
      this.#open.set(path, cached);
      return cached;
    }
    let fd: number;
    try {
      fd = openSync(path, this.#flags);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    this.add(path, fd);
    return fd;
  }

  /** Takes ownership of fd as path's descriptor (closing one already held for path). */
  add(path: string, fd: number): void {
    const previous = this.#open.get(path);
    this.#open.delete(path);
    if (previous !== undefined && previous !== fd) closeSync(previous);
    this.#open.set(path, fd);
    while (this.#open.size > this.#limit) {
      const [oldestPath, oldestFd] = this.#open.entries().next().value as [string, number];
      this.#open.delete(oldestPath);
      closeSync(oldestFd);
    }
  }

  /** Closes path's descriptor, if one is open (after a failure, so the next use opens afresh). */
  forget(path: string): void {
    const fd = this.#open.get(path);
    if (fd === undefined) return;
    this.#open.delete(path);
    closeSync(fd);
  }

  /** Descriptors open now. */
  get openCount(): number {
    return this.#open.size;
  }

  closeAll(): void {
    const fds = [...this.#open.values()];
    this.#open.clear();
    for (const fd of fds) closeSync(fd);
  }
}
