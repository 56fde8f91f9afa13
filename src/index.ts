/** bun-umap: user-space memory mapping for Bun. The public API (see the README). */
export { umap } from "./umap.ts";
export { Region, type FillError, type RegionStats } from "./region.ts";
export { UmapError, ErrorCode } from "./errors.ts";
export type { FillErrorMode, UmapOptions } from "./options.ts";
export { defineStore, type Store, type StoreDescriptor, type StoreInstance } from "./store.ts";
export { FileStore, type FileStoreOptions } from "../stores/file.ts";
export {
  Lz4Store,
  type Lz4Info,
  type Lz4OpenOptions,
  type Lz4PackOptions,
  type Lz4Verification,
} from "../stores/lz4.ts";
export {
  ShardedStore,
  type ShardedCreateOptions,
  type ShardedOpenOptions,
  type ShardedConcatOptions,
  type ShardedManifest,
} from "../stores/sharded.ts";
export { S3Store, type S3StoreOptions, type S3Options, type S3Credentials } from "../stores/s3.ts";
export { parseS3Location, type S3Location } from "../stores/lib/s3-location.ts";
