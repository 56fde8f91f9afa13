/**
 * The LZ4 part of the demo: packs a file with Lz4Store.pack(), maps the packed copy through a
 * small page buffer, and checks that SHA-256 through the mapping equals the file's. Prints the
 * compression ratio and the throughput of packing and of reading through the mapping.
 *
 *   bun bench/demo-lz4.ts [FILE] [--buffer-size BYTES] [--chunk-size BYTES]
 *
 * Without a path it packs a 31 MB library (libicudata, if present) or else the Bun executable.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Lz4Store, umap, UmapError } from "../src/index.ts";

const MiB = 1024 * 1024;
const HASH_BYTES = 4 * MiB;

/** "66.9 MiB"; sizes under 1 MiB in KiB, so a small packed file does not print as 0.0 MiB. */
function formatMiB(bytes: number): string {
  return bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

export interface Lz4DemoResult {
  matched: boolean;
  ratio: number;
  digest: string;
}

/** SHA-256 of a file read plainly (the reference). */
export function sha256OfFile(file: string): string {
  const hasher = new Bun.CryptoHasher("sha256");
  const chunk = new Uint8Array(HASH_BYTES);
  const fd = openSync(file, "r");
  try {
    for (let got; (got = readSync(fd, chunk, 0, chunk.length, null)) > 0; ) hasher.update(chunk.subarray(0, got));
  } finally {
    closeSync(fd);
  }
  return hasher.digest("hex");
}

/**
 * Packs `file`, maps the packed copy and compares digests; `expectedDigest` saves hashing the
 * file again when the caller has it. Prints its lines through `print`.
 */
export async function demoLz4(
  file: string,
  options: { bufferSize: number; chunkSize?: number; pageSize?: number; expectedDigest?: string; print?: (line: string) => void },
): Promise<Lz4DemoResult> {
  const print = options.print ?? ((line: string) => console.log(line));
  const directory = mkdtempSync(join(tmpdir(), "bun-umap-lz4-demo-"));
  try {
    const packed = join(directory, "packed.lz4");
    const packStarted = performance.now();
    await Lz4Store.pack(file, packed, options.chunkSize === undefined ? {} : { chunkSize: options.chunkSize });
    const packSeconds = (performance.now() - packStarted) / 1000;
    const store = await Lz4Store.open(packed);
    try {
      const info = store.info();
      print(
        `lz4      packed ${formatMiB(info.uncompressedSize)} into ${formatMiB(info.fileByteLength)} ` +
          `(ratio ${info.ratio.toFixed(2)}, ${info.chunkCount} chunks of ${info.chunkSize / 1024} KiB, ${info.rawChunkCount} stored raw) ` +
          `in ${packSeconds.toFixed(2)} s`,
      );
      const region = await umap(store, { bufferSize: options.bufferSize, ...(options.pageSize === undefined ? {} : { pageSize: options.pageSize }) });
      const hasher = new Bun.CryptoHasher("sha256");
      const started = performance.now();
      try {
        for (let at = 0; at < region.byteLength; at += HASH_BYTES) hasher.update(region.view(at, Math.min(HASH_BYTES, region.byteLength - at)));
      } finally {
        await region.close();
      }
      const seconds = (performance.now() - started) / 1000;
      const digest = hasher.digest("hex");
      print(`lz4      sha256 ${digest}  ${(info.uncompressedSize / seconds / 1e9).toFixed(2)} GB/s through the mapping`);
      const expected = options.expectedDigest ?? sha256OfFile(file);
      const matched = digest === expected;
      print(matched ? "match    the packed copy reads the file exactly" : "MISMATCH: the packed copy's bytes differ from the file");
      return { matched, ratio: info.ratio, digest };
    } finally {
      store.close();
    }
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values, positionals } = parseArgs({
    args: Bun.argv.slice(2),
    allowPositionals: true,
    options: { "buffer-size": { type: "string", default: String(4 * MiB) }, "chunk-size": { type: "string" } },
  });
  const library = "/usr/lib/x86_64-linux-gnu/libicudata.so.72.1";
  const file = positionals[0] ?? (existsSync(library) ? library : process.execPath);
  const size = (text: string) => {
    const match = /^(\d+)([kmg]?)$/i.exec(text);
    if (!match) throw new Error(`not a size: ${text}`);
    return Number(match[1]) * { "": 1, k: 1024, m: MiB, g: 1024 * MiB }[match[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  };
  try {
    const chunkSize = values["chunk-size"] === undefined ? undefined : size(values["chunk-size"]);
    console.log(`file     ${file}`);
    const result = await demoLz4(file, { bufferSize: size(values["buffer-size"]!), ...(chunkSize === undefined ? {} : { chunkSize }) });
    process.exitCode = result.matched ? 0 : 1;
  } catch (error) {
    if (!(error instanceof UmapError)) throw error;
    console.error(`demo-lz4: ${error.code}: ${error.message}`);
    process.exitCode = 2;
  }
}
