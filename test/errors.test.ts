/**
 * Bad input: each case is a UmapError with a stable code and a message that names the problem.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defineStore, ErrorCode, parseS3Location, umap, type UmapOptions } from "../src/index.ts";
import FileStore from "../stores/file.ts";
import { MiB, tempDir, writePatternFile, rejection } from "./helpers.ts";

const dir = tempDir();
const file = join(dir.path, "data.bin");
const empty = join(dir.path, "empty.bin");
const folder = join(dir.path, "folder");
beforeAll(() => {
  writePatternFile(file, 1 * MiB);
  writeFileSync(empty, "");
  mkdirSync(folder);
});
afterAll(() => dir.remove());

describe("targets", () => {
  test.each<[string, () => string, ErrorCode, RegExp]>([
    ["a missing file", () => join(dir.path, "missing.bin"), ErrorCode.NOT_FOUND, /missing\.bin: no such file/],
    ["a directory", () => folder, ErrorCode.INVALID_ARGUMENT, /folder: is a directory/],
    ["an empty file", () => empty, ErrorCode.INVALID_ARGUMENT, /empty\.bin is empty/],
  ])("%s", async (_name, target, code, message) => {
    const error = await rejection(umap(target()));
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
  });

  test("a target that is neither path, store nor descriptor", async () => {
    const error = await rejection(umap(42 as never));
    expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect(error.message).toContain("target must be a path");
  });

  test("an s3:// location says to pass an S3Store, not that a local file is missing", async () => {
    const error = await rejection(umap("s3://bucket/key"));
    expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect(error.message).toContain("new S3Store");
    expect(parseS3Location("s3://bucket/some/key")).toMatchObject({ bucket: "bucket", key: "some/key" });
  });

  test("a store module that does not exist", async () => {
    const error = await rejection(umap(defineStore(join(dir.path, "nope.ts"), {})));
    expect(error.code).toBe("ERR_UMAP_NOT_FOUND");
    expect(error.message).toContain("nope.ts");
  });

  test("FileStore offset and length past the end of the file", () => {
    expect(() => new FileStore(file, { offset: 2 * MiB })).toThrow(/offset 2097152 is past the end/);
    expect(() => new FileStore(file, { offset: 10, length: 1 * MiB })).toThrow(/past the end of the file/);
    expect(() => new FileStore(file, { offset: -1 })).toThrow(/offset must be a whole number/);
  });
});

describe("options", () => {
  test.each<[string, UmapOptions, RegExp]>([
    ["pageSize not a power of two", { pageSize: 3 * 4096 }, /pageSize must be a power of two, got 12288/],
    ["pageSize below the system page", { pageSize: 2048 }, /pageSize must be at least the system page size \(4096\)/],
    ["pageSize not a number", { pageSize: "64k" as never }, /pageSize must be a whole number, got "64k"/],
    ["pageSize negative", { pageSize: -4096 }, /pageSize must be from 1/],
    ["bufferSize below one page", { pageSize: 65536, bufferSize: 4096 }, /bufferSize \(4096 bytes\) must hold at least one page \(65536 bytes\)/],
    ["bufferSize not a number", { bufferSize: Number.NaN }, /bufferSize must be a whole number, got NaN/],
    ["readAhead negative", { readAhead: -1 }, /readAhead must be from 0/],
    ["fillers zero", { fillers: 0 }, /fillers must be from 1 to 64, got 0/],
    ["fillers fractional", { fillers: 1.5 }, /fillers must be a whole number, got 1.5/],
    ["water marks crossed", { highWater: 50, lowWater: 60 }, /low water mark \(60%\) must not be above the high water mark \(50%\)/],
    ["maxFaultEvents too large", { maxFaultEvents: 100000 }, /maxFaultEvents must be from 1 to 4096/],
    ["an unknown option", { pagesize: 4096 } as never, /unknown option pagesize/],
    ["writable not a boolean", { writable: "yes" as never }, /writable must be a boolean/],
  ])("%s", async (_name, options, message) => {
    const error = await rejection(umap(file, options));
    expect(error.code).toBe("ERR_UMAP_INVALID_ARGUMENT");
    expect(error.message).toMatch(message);
  });
});

describe("a closed region", () => {
  test("every method throws ERR_UMAP_CLOSED naming the method", async () => {
    const region = await umap(file, { bufferSize: 1 * MiB });
    await region.close();
    for (const [method, call] of [
      ["bytes", () => region.bytes],
      ["view()", () => region.view(0, 1)],
      ["stats()", () => region.stats()],
      ["prefetch()", () => region.prefetch(0, 1)],
      ["flush()", () => region.flush()],
    ] as const) {
      const error = await rejection(call);
      expect(error.code).toBe("ERR_UMAP_CLOSED");
      expect(error.message).toContain(`cannot use ${method}`);
      expect(error.message).toContain("data.bin");
    }
  });
});

describe("views", () => {
  test("out of range, negative or fractional arguments", async () => {
    await using region = await umap(file, { bufferSize: 1 * MiB });
    expect(() => region.view(1 * MiB - 10, 11)).toThrow(/past its end \(1048576 bytes\)/);
    expect(() => region.view(-1, 1)).toThrow(/byteOffset must be a whole number >= 0, got -1/);
    expect(() => region.view(0, 1.5)).toThrow(/byteLength must be a whole number >= 0, got 1.5/);
    expect(() => region.prefetch(0, 2 * MiB)).toThrow(/past its end/);
  });
});

describe("the environment", () => {
  test("a temporary directory the compiler cannot write to is named, not mistaken for missing kernel headers", () => {
    const path = join(dir.path, "small.bin");
    writePatternFile(path, 4096);
    const result = Bun.spawnSync(
      [process.execPath, "-e", `import { umap } from "./src/index.ts"; const e = await umap(${JSON.stringify(path)}).catch((e) => e); console.log(e.code, e.message.split("\\n")[0]);`],
      { cwd: join(import.meta.dir, ".."), env: { ...process.env, TMPDIR: "/nonexistent/bun-umap" }, stdout: "pipe", stderr: "pipe", timeout: 30_000 },
    );
    const stdout = result.stdout.toString();
    expect(stdout).toContain("ERR_UMAP_UNSUPPORTED");
    expect(stdout).toContain("temporary directory /nonexistent/bun-umap");
    expect(stdout).not.toContain("kernel headers");
  });
});
