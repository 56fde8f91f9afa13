/**
 * Options and UMap's environment variables: defaults, units, precedence and rejection.
 */
import { describe, expect, test } from "bun:test";
import { resolveOptions } from "../src/options.ts";

const PAGE = 4096;

describe("environment variables", () => {
  test("each UMAP_* variable sets its setting, in UMap's units", () => {
    const { engine, region } = resolveOptions(undefined, PAGE, {
      UMAP_PAGESIZE: "16384",
      UMAP_BUFSIZE: "100", // pages, as in UMap
      UMAP_PAGE_FILLERS: "3",
      UMAP_PAGE_EVICTORS: "5",
      UMAP_EVICT_HIGH_WATER_THRESHOLD: "80",
      UMAP_EVICT_LOW_WATER_THRESHOLD: "40",
      UMAP_READ_AHEAD: "7",
      UMAP_MAX_FAULT_EVENTS: "32",
    });
    expect(region).toEqual({ pageSize: 16384, writable: false, readAhead: 7, onFillError: "sigbus" });
    expect(engine).toEqual({
      bufferBytes: 100 * 16384,
      fillers: 3,
      evictors: 5,
      highWaterPercent: 80,
      lowWaterPercent: 40,
      maxFaultEvents: 32,
    });
  });

  test("options win over variables", () => {
    const { engine, region } = resolveOptions({ pageSize: 8192, bufferSize: 65536, fillers: 1 }, PAGE, {
      UMAP_PAGESIZE: "16384",
      UMAP_BUFSIZE: "100",
      UMAP_PAGE_FILLERS: "3",
    });
    expect(region.pageSize).toBe(8192);
    expect(engine.bufferBytes).toBe(65536);
    expect(engine.fillers).toBe(1);
  });

  test("defaults: 64 KiB pages, adaptive read-ahead, 90/70 water marks, a buffer that holds pages", () => {
    const { engine, region, explicit } = resolveOptions(undefined, PAGE, {});
    expect(region).toEqual({ pageSize: 65536, writable: false, readAhead: -1, onFillError: "sigbus" });
    expect(engine.highWaterPercent).toBe(90);
    expect(engine.lowWaterPercent).toBe(70);
    expect(engine.bufferBytes % 65536).toBe(0);
    expect(engine.bufferBytes).toBeGreaterThanOrEqual(64 * 65536);
    expect(Object.values(explicit).some(Boolean)).toBe(false);
  });

  test.each([
    ["UMAP_PAGESIZE", "64k", /UMAP_PAGESIZE must be a whole number, got "64k"/],
    ["UMAP_PAGESIZE", "12288", /environment variable UMAP_PAGESIZE must be a power of two/],
    ["UMAP_BUFSIZE", "-3", /UMAP_BUFSIZE must be a whole number/],
    ["UMAP_PAGE_FILLERS", "0", /UMAP_PAGE_FILLERS must be from 1 to 64, got 0/],
    ["UMAP_EVICT_HIGH_WATER_THRESHOLD", "101", /UMAP_EVICT_HIGH_WATER_THRESHOLD must be from 1 to 100/],
    ["UMAP_READ_AHEAD", "1.5", /UMAP_READ_AHEAD must be a whole number/],
  ])("%s=%p is rejected, naming the variable", (name, value, message) => {
    expect(() => resolveOptions(undefined, PAGE, { [name]: value })).toThrow(message);
  });
});
