/** FileStore joins the store conformance suite: a whole file, and a part of a larger one. */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FileStore } from "../src/index.ts";
import { storeConformance } from "./conformance.ts";
import { tempDir } from "./helpers.ts";

let fileCount = 0;

const dir = tempDir();
storeConformance(
  "FileStore",
  async () => {
    let lastPath = "";
    return {
      writable: true,
      async make(data, { writable }) {
        lastPath = join(dir.path, `file-${fileCount++}.bin`);
        writeFileSync(lastPath, data);
        return new FileStore(lastPath, { writable });
      },
      async reopen({ writable }) {
        return new FileStore(lastPath, { writable });
      },
    };
  },
  async () => dir.remove(),
);

// The same data in the middle of a file, between guard bytes that must survive every write.
const GUARD_BYTES = 4096 + 17;
const partDir = tempDir();
storeConformance(
  "FileStore with offset and length",
  async () => {
  let last = { path: "", length: 0 };
  const checkGuards = () => {
    const bytes = readFileSync(last.path);
    const guardSum = (from: number, to: number) => bytes.subarray(from, to).reduce((sum, byte) => sum + (byte === 0xfe ? 0 : 1), 0);
    if (guardSum(0, GUARD_BYTES) + guardSum(GUARD_BYTES + last.length, bytes.length) !== 0) {
      throw new Error(`${last.path}: a write reached the guard bytes around the mapped part`);
    }
  };
  return {
    writable: true,
    async make(data, { writable }) {
      const path = join(partDir.path, `part-${fileCount++}.bin`);
      const file = new Uint8Array(GUARD_BYTES * 2 + data.length).fill(0xfe);
      file.set(data, GUARD_BYTES);
      writeFileSync(path, file);
      last = { path, length: data.length };
      return new FileStore(path, { writable, offset: GUARD_BYTES, length: data.length });
    },
    async reopen({ writable }) {
      checkGuards();
      return new FileStore(last.path, { writable, offset: GUARD_BYTES, length: last.length });
    },
  };
  },
  async () => partDir.remove(),
);
