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
import type { WorkloadResult } from "../bench/lib/report.ts";
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
    } finally {
      out.remove();
    }
  }, 200_000);
});
