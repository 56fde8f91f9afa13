#!/usr/bin/env bun
/**
 * bun-umap: the command line for packed LZ4 datastores.
 *
 *   bun-umap pack SOURCE TARGET [--chunk-size BYTES]
 *   bun-umap unpack SOURCE TARGET
 *   bun-umap verify FILE
 *   bun-umap info FILE [--json]
 *   bun-umap compact FILE
 *
 * Exit status: 0 success, 1 the file is corrupt or the operation failed, 2 bad usage.
 */
import { parseArgs } from "node:util";
import { Lz4Store, UmapError } from "../src/index.ts";
import { CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, isPowerOfTwo } from "../stores/lib/lz4-format.ts";

const USAGE = `usage: bun-umap COMMAND ...

  pack SOURCE TARGET [--chunk-size BYTES]   compress a file into a packed LZ4 file (default chunks 64k)
  unpack SOURCE TARGET                      write the data a packed file holds to a plain file
  verify FILE                               check every chunk; name each one that fails
  info FILE [--json]                        sizes, compression ratio, chunk count
  compact FILE                              reclaim the space of superseded chunks

Sizes accept k, m and g suffixes. Exit status: 0 ok, 1 corrupt or failed, 2 bad usage.`;

const KiB = 1024;

function usageError(message: string): never {
  process.stderr.write(`bun-umap: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function parseSize(name: string, text: string): number {
  const match = /^(\d+)([kmg]?)i?b?$/i.exec(text.trim());
  if (!match) usageError(`--${name} must be a size in bytes such as 65536 or 64k, got ${JSON.stringify(text)}`);
  const scale = { "": 1, k: KiB, m: KiB * KiB, g: KiB * KiB * KiB }[match[2]!.toLowerCase() as "" | "k" | "m" | "g"];
  return Number(match[1]) * scale;
}

function formatBytes(bytes: number): string {
  if (bytes >= KiB * KiB) return `${(bytes / KiB / KiB).toFixed(1)} MiB`;
  return bytes >= KiB ? `${(bytes / KiB).toFixed(1)} KiB` : `${bytes} B`;
}

function operands(command: string, positionals: string[], names: string[]): string[] {
  if (positionals.length !== names.length) {
    usageError(`${command} takes ${names.join(" ")}, got ${positionals.length} argument(s)`);
  }
  return positionals;
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: Bun.argv.slice(2),
      allowPositionals: true,
      options: { "chunk-size": { type: "string" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    });
  } catch (error) {
    usageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const [command, ...rest] = positionals;
  if (values["chunk-size"] !== undefined && command !== "pack") usageError("--chunk-size is an option of pack only");
  if (values.json && command !== "info") usageError("--json is an option of info only");
  switch (command) {
    case "pack": {
      const [source, target] = operands(command, rest, ["SOURCE", "TARGET"]);
      const chunkSize = values["chunk-size"] === undefined ? undefined : parseSize("chunk-size", values["chunk-size"]);
      // A size that is well formed but not one a packed file can have is bad usage too.
      if (chunkSize !== undefined && (!isPowerOfTwo(chunkSize) || chunkSize < CHUNK_SIZE_MIN || chunkSize > CHUNK_SIZE_MAX)) {
        usageError(`--chunk-size must be a power of two from 4k to 16m, got ${JSON.stringify(values["chunk-size"])}`);
      }
      await Lz4Store.pack(source!, target!, chunkSize === undefined ? {} : { chunkSize });
      const store = await Lz4Store.open(target!);
      try {
        const info = store.info();
        process.stdout.write(
          `packed ${source} (${formatBytes(info.uncompressedSize)}) into ${target} (${formatBytes(info.fileByteLength)}), ` +
            `ratio ${info.ratio.toFixed(2)}, ${info.chunkCount} chunks of ${formatBytes(info.chunkSize)}\n`,
        );
      } finally {
        store.close();
      }
      return 0;
    }
    case "unpack": {
      const [source, target] = operands(command, rest, ["SOURCE", "TARGET"]);
      await Lz4Store.unpack(source!, target!);
      process.stdout.write(`unpacked ${source} into ${target}\n`);
      return 0;
    }
    case "verify": {
      const [path] = operands(command, rest, ["FILE"]);
      const store = await Lz4Store.open(path!);
      try {
        const { chunkCount, badChunks } = await store.verify();
        for (const bad of badChunks) process.stdout.write(`bad chunk ${bad.chunkIndex}: ${bad.message}\n`);
        process.stdout.write(
          badChunks.length === 0
            ? `ok: ${path}: all ${chunkCount} chunks pass their checksums\n`
            : `CORRUPT: ${path}: ${badChunks.length} of ${chunkCount} chunks are bad\n`,
        );
        return badChunks.length === 0 ? 0 : 1;
      } finally {
        store.close();
      }
    }
    case "info": {
      const [path] = operands(command, rest, ["FILE"]);
      const store = await Lz4Store.open(path!);
      try {
        const info = store.info();
        if (values.json) {
          process.stdout.write(`${JSON.stringify(info)}\n`);
        } else {
          process.stdout.write(
            `file          ${info.path}\n` +
              `packed size   ${info.fileByteLength} bytes (${formatBytes(info.fileByteLength)})\n` +
              `data size     ${info.uncompressedSize} bytes (${formatBytes(info.uncompressedSize)})\n` +
              `ratio         ${info.ratio.toFixed(3)}\n` +
              `chunks        ${info.chunkCount} of ${info.chunkSize} bytes: ${info.lz4ChunkCount} LZ4, ${info.rawChunkCount} raw\n` +
              `superseded    ${info.supersededByteLength} bytes (compact reclaims them)\n`,
          );
        }
        return 0;
      } finally {
        store.close();
      }
    }
    case "compact": {
      const [path] = operands(command, rest, ["FILE"]);
      const { byteLengthBefore, byteLengthAfter } = await Lz4Store.compact(path!);
      process.stdout.write(`compacted ${path}: ${formatBytes(byteLengthBefore)} -> ${formatBytes(byteLengthAfter)}\n`);
      return 0;
    }
    case undefined:
      usageError("no command given");
    default:
      usageError(`unknown command ${JSON.stringify(command)}`);
  }
}

try {
  process.exitCode = await main();
} catch (error) {
  if (!(error instanceof UmapError)) throw error;
  process.stderr.write(`bun-umap: ${error.code}: ${error.message}\n`);
  process.exitCode = 1;
}
