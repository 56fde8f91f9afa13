/**
 * `s3://bucket/key-or-prefix` locations: one parser, with typed errors, for every store that
 * accepts them (S3Store, and the sharded and LZ4 stores).
 */
import { invalidArgument } from "../../src/errors.ts";

export interface S3Location {
  readonly bucket: string;
  /** The object key, or a prefix; "" when the location names only the bucket. */
  readonly key: string;
}

const SCHEME = "s3://";
/** S3's limit on a key, in UTF-8 bytes. */
const KEY_BYTES_MAX = 1024;
// S3's bucket naming rules: 3 to 63 lower-case letters, digits, dots and hyphens, starting and
// ending with a letter or digit. Underscores are accepted for buckets created before 2018.
const BUCKET_PATTERN = /^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/;

/** True if `location` is meant as an S3 location (it starts with s3://, in any case). */
export function isS3Location(location: string): boolean {
  return location.slice(0, SCHEME.length).toLowerCase() === SCHEME;
}

/**
 * Parses `s3://bucket/key`. With `requireKey` (the default) the key must not be empty, as for a
 * single object. Throws ERR_UMAP_INVALID_ARGUMENT naming the location and what is wrong.
 */
export function parseS3Location(location: string, options: { requireKey?: boolean } = {}): S3Location {
  if (typeof location !== "string") invalidArgument(`S3 location must be a string like s3://bucket/key, got ${typeof location}`);
  const shown = JSON.stringify(location);
  if (!isS3Location(location)) invalidArgument(`S3 location ${shown} must start with s3://`);
  const rest = location.slice(SCHEME.length);
  const slash = rest.indexOf("/");
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const key = slash < 0 ? "" : rest.slice(slash + 1);
  checkBucket(bucket, `S3 location ${shown}`);
  if (options.requireKey !== false && key.length === 0) {
    invalidArgument(`S3 location ${shown} names no object: expected s3://${bucket}/KEY`);
  }
  checkKey(key, `S3 location ${shown}`, options.requireKey !== false);
  return { bucket, key };
}

/** Throws unless `bucket` is a valid bucket name; `what` names where it came from. */
export function checkBucket(bucket: unknown, what: string): asserts bucket is string {
  if (typeof bucket !== "string" || bucket.length === 0) invalidArgument(`${what}: bucket is missing`);
  if (!BUCKET_PATTERN.test(bucket) || bucket.includes("..")) {
    invalidArgument(
      `${what}: bucket ${JSON.stringify(bucket)} is not a valid bucket name ` +
        "(3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit)",
    );
  }
}

/** Throws unless `key` is a valid object key (or prefix, when it may be empty). */
export function checkKey(key: unknown, what: string, required = true): asserts key is string {
  if (typeof key !== "string" || (required && key.length === 0)) invalidArgument(`${what}: key is missing`);
  if (Buffer.byteLength(key) > KEY_BYTES_MAX) invalidArgument(`${what}: key is longer than S3's ${KEY_BYTES_MAX} bytes`);
  // Control characters cannot be signed portably, and are always a mistake in a path.
  if (/[\u0000-\u001f\u007f]/.test(key)) invalidArgument(`${what}: key ${JSON.stringify(key)} contains a control character`);
}
