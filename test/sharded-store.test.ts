/**
 * ShardedStore joins the store conformance suite twice: as a datastore (shards of a size that
 * is not a page multiple, so pages straddle shards) and as a read-only concatenation of files of
 * uneven sizes, one of them empty.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ShardedStore } from "../src/index.ts";
import { storeConformance } from "./conformance.ts";
import { KiB, tempDir } from "./helpers.ts";

/** Not a page multiple: most shard boundaries fall inside a page. */
const SHARD_BYTES = 300 * KiB + 7;
/** Data is written to a new datastore in pieces of this size (zero pieces make no shard). */
const WRITE_BYTES = 96 * KiB;

const datastores = tempDir();
let datastoreCount = 0;
storeConformance(
  "ShardedStore datastore",
  async () => {
    let lastDirectory = "";
    return {
      writable: true,
      async make(data, { writable }) {
        lastDirectory = join(datastores.path, `datastore-${datastoreCount++}`);
        const store = await ShardedStore.create(lastDirectory, { size: data.length, shardSize: SHARD_BYTES });
        for (let offset = 0; offset < data.length; offset += WRITE_BYTES) {
          store.write(offset, data.subarray(offset, Math.min(offset + WRITE_BYTES, data.length)));
        }
        store.flush();
        store.close();
        return ShardedStore.open(lastDirectory, { writable });
      },
      async reopen({ writable }) {
        return ShardedStore.open(lastDirectory, { writable });
      },
    };
  },
  async () => datastores.remove(),
);

const concatenations = tempDir();
let concatCount = 0;
storeConformance(
  "ShardedStore concat",
  async () => {
    let lastPaths: string[] = [];
    return {
      writable: false,
      async make(data) {
        // Uneven cuts, one empty file: [0, 1/7), [1/7, 1/7), [1/7, 2/3), [2/3, end).
        const cuts = [0, Math.floor(data.length / 7), Math.floor(data.length / 7), Math.floor((data.length * 2) / 3), data.length];
        lastPaths = cuts.slice(1).map((end, i) => {
          const path = join(concatenations.path, `part-${concatCount++}.bin`);
          writeFileSync(path, data.subarray(cuts[i]!, end));
          return path;
        });
        return ShardedStore.concat(lastPaths);
      },
      async reopen() {
        return ShardedStore.concat(lastPaths);
      },
    };
  },
  async () => concatenations.remove(),
);
