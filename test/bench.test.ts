/**
 * The benchmark suite as a smoke test: `bun bench/run.ts --quick` in a child process must check
 * every workload's work (sums, sortedness, written bytes) and write each workload's JSON and
 * SVG. Timings are never asserted: the machine may be shared.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { barChartSvg } from "../bench/lib/svg.ts";
import { alternation, median, percentile } from "../bench/lib/stats.ts";
import { formatTable, type WorkloadResult } from "../bench/lib/report.ts";
import { WORKLOADS } from "../bench/workloads/index.ts";
import { tempDir } from "./helpers.ts";

const ROOT = join(import.meta.dir, "..");

describe("bench library", () => {
  test("median and percentile by nearest rank", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(percentile(hundred, 0.5)).toBe(50);
    expect(percentile(hundred, 0.99)).toBe(99);
    expect(percentile(hundred, 1)).toBe(100);
    expect(() => median([])).toThrow(RangeError);
    expect(() => percentile([1], 1.5)).toThrow(RangeError);
  });

  test("alternation runs every system once per repeat, never the same one first twice in a row", () => {
    for (let repeat = 0; repeat < 6; repeat++) {
      const order = alternation(5, repeat);
      expect([...order].sort()).toEqual([0, 1, 2, 3, 4]);
      expect(order[0]).not.toBe(alternation(5, repeat + 1)[0]);
    }
  });

  test("the chart has one bar per system, scaled to the largest, with escaped labels", () => {
    const svg = barChartSvg({ title: "t <1>", subtitle: "s", unit: "GB/s", bars: [{ label: "a & b", value: 2 }, { label: "c", value: 1 }] });
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("a &amp; b");
    expect(svg).toContain("t &lt;1&gt;");
    const widths = [...svg.matchAll(/<rect x="230" y="\d+" width="(\d+)"/g)].map((m) => Number(m[1]));
    expect(widths).toHaveLength(2);
    expect(widths[0]).toBe(2 * widths[1]!);
  });

  test("bars of different units are each scaled to the largest of their own unit", () => {
    const svg = barChartSvg({
      title: "t",
      subtitle: "s",
      unit: "GB/s",
      bars: [
        { label: "a", value: 4 },
        { label: "b", value: 1 },
        { label: "c", value: 300, unit: "reads/s" },
        { label: "d", value: 150, unit: "reads/s" },
      ],
    });
    const widths = [...svg.matchAll(/<rect x="230" y="\d+" width="(\d+)"/g)].map((m) => Number(m[1]));
    expect(widths).toHaveLength(4);
    expect(widths[0]).toBe(widths[2]!);
    expect(widths[0]).toBe(4 * widths[1]!);
    expect(widths[2]).toBe(2 * widths[3]!);
    expect(svg).toContain("300 reads/s");
    expect(svg).toContain("4.00 GB/s");
  });

  test("the table names a system that could not run, with the reason", () => {
    const table = formatTable([
      {
        workload: "w",
        description: "d",
        quick: true,
        parameters: {},
        machine: {} as WorkloadResult["machine"],
        systems: [],
        ratios: [],
        targets: [],
        checks: [{ name: "x", passed: true, detail: "1 runs checked" }],
        skipped: [{ name: "s3fs + Bun.mmap", reason: "/dev/fuse does not exist" }],
        notes: [],
        startedAt: "",
        wallSeconds: 0,
      },
    ]);
    expect(table).toMatch(/\| w +\| s3fs \+ Bun\.mmap +\| +\| not run +\| \/dev\/fuse does not exist \|/);
  });
});

describe("bench --quick", () => {
  test("every workload checks its work and writes its JSON and chart", () => {
    const out = tempDir("bun-umap-bench-test-");
    try {
      const child = Bun.spawnSync([process.execPath, join(ROOT, "bench", "run.ts"), "--quick", "--out", out.path], {
        cwd: ROOT,
        stdout: "pipe",
        stderr: "pipe",
        timeout: 180_000,
      });
      const stdout = child.stdout.toString();
      const stderr = child.stderr.toString();
      if (child.exitCode !== 0) console.error(stderr.slice(-4000));
      expect(child.exitCode).toBe(0);
      for (const workload of WORKLOADS) {
        const jsonPath = join(out.path, `${workload.name}.json`);
        expect(existsSync(jsonPath)).toBe(true);
        expect(readFileSync(join(out.path, `${workload.name}.svg`), "utf8")).toStartWith("<svg");
        const result = JSON.parse(readFileSync(jsonPath, "utf8")) as WorkloadResult;
        expect(result.workload).toBe(workload.name);
        expect(result.quick).toBe(true);
        expect(result.machine.cores).toBeGreaterThan(0);
        expect(result.machine.kernel).toBeString();
        expect(result.machine.bunVersion).toBe(Bun.version);
        expect(result.machine.loadAverageStart).toHaveLength(3);
        expect(result.checks.length).toBeGreaterThan(0);
        expect(result.checks.filter((check) => !check.passed)).toEqual([]);
        expect(result.systems.length).toBeGreaterThanOrEqual(3);
        for (const system of result.systems) {
          expect(system.samplesSeconds.length).toBeGreaterThanOrEqual(1);
          expect(Number.isFinite(system.medianSeconds)).toBe(true);
          expect(system.metric.value).toBeGreaterThan(0);
        }
        for (const t of result.targets) expect(Number.isFinite(t.measured)).toBe(true);
        expect(stdout).toContain(`| ${workload.name}`);
      }
      // umap systems report the engine's counters: the scan filled every page.
      const warm = JSON.parse(readFileSync(join(out.path, "seq-warm.json"), "utf8")) as WorkloadResult;
      const umap64 = warm.systems.find((s) => s.name === "umap 64 KiB")!;
      expect(umap64.extra.fills).toBe(Number(warm.parameters.byteLength) / (64 * 1024));

      // s3: both halves ran against the loopback server, each through S3Store and both clients.
      const s3 = JSON.parse(readFileSync(join(out.path, "s3.json"), "utf8")) as WorkloadResult;
      const s3Names = s3.systems.map((s) => s.name);
      for (const name of ["seq: umap S3Store 1 MiB", "seq: SDK ranged GETs", "seq: Bun.S3Client ranged GETs", "random: umap S3Store 64 KiB", "random: SDK ranged GET", "random: Bun.S3Client ranged GET"]) {
        expect(s3Names).toContain(name);
      }
      // s3fs either ran or says exactly why not, in the JSON and in the table.
      const s3fsRan = s3Names.includes("seq: s3fs + Bun.mmap");
      expect(s3fsRan).toBe(s3Names.includes("random: s3fs + Bun.mmap"));
      if (s3fsRan) {
        expect(s3.skipped).toEqual([]);
      } else {
        expect(s3.skipped!.map((s) => s.name)).toEqual(["seq: s3fs + Bun.mmap", "random: s3fs + Bun.mmap"]);
        expect(s3.skipped![0]!.reason.length).toBeGreaterThan(0);
        expect(stdout).toContain(s3.skipped![0]!.reason);
      }
      const s3Store = s3.systems.find((s) => s.name === "seq: umap S3Store 1 MiB")!;
      // Every page of the object was filled. The ceiling's GETs send each byte exactly once;
      // S3Store's did in quick runs, but it may fetch part of a chunk again when its chunk table
      // has no room (seen in one full run: 1.03 times the object), so only at least once.
      expect(s3Store.extra.fills).toBe(Number(s3.parameters.byteLength) / (1024 * 1024));
      expect(s3Store.extra.sentPerObjectByte).toBeGreaterThanOrEqual(1);
      const ceiling = s3.systems.find((s) => s.name === "seq: SDK ranged GETs")!;
      expect(ceiling.extra.sentPerObjectByte).toBe(1);
      // Each random read was a distinct block: one fill of one 64 KiB page per read.
      const randomStore = s3.systems.find((s) => s.name === "random: umap S3Store 64 KiB")!;
      expect(randomStore.extra.fills).toBe(Number(s3.parameters.readCount));
      expect(randomStore.extra.p50Us).toBeGreaterThan(0);
      expect(s3.targets).toHaveLength(2);

      // lz4: the packed store, FileStore over the raw file and the whole-file peer read the same sum.
      const lz4 = JSON.parse(readFileSync(join(out.path, "lz4.json"), "utf8")) as WorkloadResult;
      expect(lz4.systems.map((s) => s.name)).toEqual(["umap 1 MiB Lz4Store", "umap 1 MiB FileStore (raw)", "umap 64 KiB Lz4Store", "umap 64 KiB FileStore (raw)", "lz4-napi whole file"]);
      expect(Number(lz4.parameters.ratio)).toBeGreaterThan(2);
      expect(lz4.parameters.rawChunkCount).toBe(0);
      const lz4Store = lz4.systems.find((s) => s.name === "umap 1 MiB Lz4Store")!;
      expect(lz4Store.extra.fills).toBe(Number(lz4.parameters.byteLength) / (1024 * 1024));
      expect(lz4.targets).toHaveLength(1);
    } finally {
      out.remove();
    }
  }, 200_000);
});
