import { constants } from "node:os";

/** Every code the library raises. Stable: users match on these. */
export const ErrorCode = {
  INVALID_ARGUMENT: "ERR_UMAP_INVALID_ARGUMENT",
  NOT_FOUND: "ERR_UMAP_NOT_FOUND",
  CLOSED: "ERR_UMAP_CLOSED",
  UNSUPPORTED: "ERR_UMAP_UNSUPPORTED",
  STORE: "ERR_UMAP_STORE",
  CORRUPT: "ERR_UMAP_CORRUPT",
  /** The engine returned an error it should not have: a bug in bun-umap. */
  INTERNAL: "ERR_UMAP_INTERNAL",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The one error class of the library: a stable `code`, a message naming what is involved. */
export class UmapError extends Error {
  override readonly name = "UmapError";
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

const errnoNames = new Map<number, string>([
  // The engine's own errno values that Node's table lacks (Linux numbering).
  [108, "ESHUTDOWN"],
  ...Object.entries(constants.errno).map(([name, value]) => [value, name] as [number, string]),
]);

/** "ENOENT" for 2, and so on; "errno N" for numbers the platform does not name. */
export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `errno ${Math.abs(errno)}`;
}

/**
 * Turns a negative errno returned by the engine into a UmapError. `what` says what was being
 * done, for the message ("registering region /data/x").
 */
export function engineError(result: number, what: string, code: ErrorCode = ErrorCode.INTERNAL): UmapError {
  return new UmapError(code, `${what}: ${errnoName(result)}`, {
    cause: Object.assign(new Error(errnoName(result)), { errno: result }),
  });
}

/** Throws an INVALID_ARGUMENT error: the message names the argument and what is wrong. */
export function invalidArgument(message: string): never {
  throw new UmapError(ErrorCode.INVALID_ARGUMENT, message);
}

/** A value as a message shows it: strings quoted, numbers as they are, anything else by its kind. */
export function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value == null) return String(value);
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

/** A short, single-line description of any thrown value, for messages and logs. */
export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return `${typeof code === "string" ? `${code}: ` : ""}${error.message}`.replaceAll("\n", " ");
  }
  return String(error);
}
