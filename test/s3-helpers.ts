/**
 * The loopback S3 servers of the tests. Their start-up is shared with the benchmarks and the
 * demo, so it lives in bench/lib/s3-server.ts; this module only re-exports it.
 */
export * from "../bench/lib/s3-server.ts";
