/**
 * What a workload reports, and how the run writes it: one JSON file and one SVG chart per
 * workload, and one table on stdout.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MachineFacts } from "./machine.ts";
import { barChartSvg } from "./svg.ts";

/** One system's figures in a workload. */
export interface SystemResult {
  name: string;
  /** Seconds of each repeat, in the order run. */
  samplesSeconds: number[];
  medianSeconds: number;
  /** The headline figure (median), its unit, and whether larger is better. */
  metric: { name: string; unit: string; value: number; higherIsBetter: boolean };
  /** Other figures: per-fault percentiles, counters of the last repeat, RSS, ... */
  extra: Record<string, number | string>;
}

export interface Check {
  name: string;
  passed: boolean;
  detail: string;
}

export interface Ratio {
  /** "umap 1 MiB / Bun.mmap" */
  name: string;
  value: number;
}

export interface Target {
  description: string;
  /** The ratio or figure it is judged on. */
  measured: number;
  threshold: number;
  /** "at least" or "at most" the threshold. */
  comparison: "at least" | "at most";
  met: boolean;
}

export interface WorkloadResult {
  workload: string;
  description: string;
  quick: boolean;
  parameters: Record<string, number | string | boolean>;
  machine: MachineFacts;
  systems: SystemResult[];
  ratios: Ratio[];
  targets: Target[];
  checks: Check[];
  /** Systems that could not run here, each with the exact reason (a missing device, package). */
  skipped?: Skipped[];
  notes: string[];
  startedAt: string;
  wallSeconds: number;
}

export interface Skipped {
  name: string;
  reason: string;
}

export function target(description: string, measured: number, comparison: Target["comparison"], threshold: number): Target {
  const met = comparison === "at least" ? measured >= threshold : measured <= threshold;
  return { description, measured, threshold, comparison, met };
}

export function writeResult(outDir: string, result: WorkloadResult): { jsonPath: string; svgPath: string } {
  mkdirSync(outDir, { recursive: true });
  const jsonPath = join(outDir, `${result.workload}.json`);
  const svgPath = join(outDir, `${result.workload}.svg`);
  writeFileSync(jsonPath, JSON.stringify(result, null, 2) + "\n");
  const first = result.systems[0];
  // Every metric the workload reports, once each: "throughput (GB/s)", "reads (reads/s)".
  const unit = [...new Set(result.systems.map((s) => `${s.metric.name} (${s.metric.unit})`))].join(", ");
  const higherIsBetter = first?.metric.higherIsBetter ?? true;
  const title =
    `${result.workload}: ${result.description}` + (result.quick ? " [quick]" : "");
  writeFileSync(
    svgPath,
    barChartSvg({
      title,
      subtitle: `${unit}, median of ${first?.samplesSeconds.length ?? 0}; ${higherIsBetter ? "longer is better" : "shorter is better"}; load ${result.machine.loadAverageStart[0]}, ${result.machine.cores} cores, Linux ${result.machine.kernel}, Bun ${result.machine.bunVersion}`,
      bars: result.systems.map((system) => ({
        // Per-read latency is what the random workload is judged on: show it next to the rate.
        label: "p50Us" in system.extra ? `${system.name} (p50 ${formatFigure(Number(system.extra.p50Us))} us)` : system.name,
        value: system.metric.value,
        unit: system.metric.unit,
      })),
      unit: first?.metric.unit ?? "",
    }),
  );
  return { jsonPath, svgPath };
}

/** Formats a figure with 3 significant digits. */
export function formatFigure(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return Math.round(value).toLocaleString("en-US");
  return value.toPrecision(3);
}

/** The run's table: one row per system, then the workload's targets. */
export function formatTable(results: WorkloadResult[]): string {
  const rows: string[][] = [["workload", "system", "median", "metric", "notes"]];
  for (const result of results) {
    for (const system of result.systems) {
      const ratio = result.ratios.find((r) => r.name.startsWith(`${system.name} /`));
      const percentiles = ["p50Us", "p99Us"].filter((k) => k in system.extra).map((k) => `${k.slice(0, 3)} ${formatFigure(Number(system.extra[k]))} us`);
      const notes = [ratio ? `${formatFigure(ratio.value)}x ${ratio.name.split(" / ")[1]}` : "", ...percentiles].filter(Boolean).join(", ");
      rows.push([result.workload, system.name, `${formatFigure(system.medianSeconds)} s`, `${formatFigure(system.metric.value)} ${system.metric.unit}`, notes]);
    }
    for (const skipped of result.skipped ?? []) {
      rows.push([result.workload, skipped.name, "", "not run", skipped.reason]);
    }
    for (const t of result.targets) {
      rows.push([result.workload, `target: ${t.description}`, "", `${formatFigure(t.measured)} (${t.comparison} ${t.threshold})`, t.met ? "met" : "NOT met"]);
    }
    const failed = result.checks.filter((c) => !c.passed);
    rows.push([result.workload, "checks", "", `${result.checks.length - failed.length}/${result.checks.length} passed`, failed.map((c) => `${c.name}: ${c.detail}`).join("; ")]);
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  const line = (row: string[]) => "| " + row.map((cell, i) => cell.padEnd(widths[i]!)).join(" | ") + " |";
  return [line(rows[0]!), "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|", ...rows.slice(1).map(line)].join("\n");
}
