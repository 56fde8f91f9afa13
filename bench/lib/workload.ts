/**
 * The shape of a workload and the loop every workload shares: run each system once per repeat,
 * in alternating order, check what each run computed, and summarize the samples.
 */
import type { DataDir } from "./data.ts";
import type { Check, SystemResult, WorkloadResult } from "./report.ts";
import { alternation, median } from "./stats.ts";

export interface BenchContext {
  quick: boolean;
  /** Repeats of each system (the medians are over these). */
  repeats: number;
  data: DataDir;
  /** One line of progress on stderr. */
  progress(message: string): void;
  /** The bench/ directory, for workloads that start child processes. */
  benchDir: string;
}

/** What one run of one system reports. */
export interface Sample {
  /** Seconds of the timed part only (setup such as mapping and unmapping is in extra). */
  seconds: number;
  /** null when the run's result checked out, or what was wrong. */
  problem: string | null;
  extra?: Record<string, number | string>;
}

export interface SystemSpec {
  name: string;
  run(repeatIndex: number): Promise<Sample>;
  /** Turns the median seconds and the samples into the headline figure. */
  metric(medianSeconds: number, samples: Sample[]): SystemResult["metric"];
  /** Other figures from all samples (percentiles, ...); the last sample's extra is kept too. */
  summarize?(samples: Sample[]): Record<string, number | string>;
}

/** What a workload reports; the runner adds the rest of its WorkloadResult (name, machine, times). */
export type WorkloadOutcome = Pick<WorkloadResult, "parameters" | "systems" | "ratios" | "targets" | "checks" | "skipped" | "notes">;

export interface Workload {
  name: string;
  description: string;
  run(context: BenchContext): Promise<WorkloadOutcome>;
}

/**
 * Runs every system `repeats` times in alternating order. A run that throws is a failed check,
 * not a crash of the whole suite; the system then has no figure.
 */
export async function runSystems(context: BenchContext, workload: string, systems: SystemSpec[], repeats = context.repeats) {
  const samples = systems.map(() => [] as Sample[]);
  const checks: Check[] = [];
  const failures = systems.map(() => [] as string[]);
  for (let repeatIndex = 0; repeatIndex < repeats; repeatIndex++) {
    for (const index of alternation(systems.length, repeatIndex)) {
      const system = systems[index]!;
      try {
        const sample = await system.run(repeatIndex);
        samples[index]!.push(sample);
        if (sample.problem) failures[index]!.push(`repeat ${repeatIndex + 1}: ${sample.problem}`);
        context.progress(`${workload}: ${system.name} repeat ${repeatIndex + 1}/${repeats}: ${sample.seconds.toFixed(3)} s${sample.problem ? ` CHECK FAILED: ${sample.problem}` : ""}`);
      } catch (error) {
        failures[index]!.push(`repeat ${repeatIndex + 1} threw: ${String(error)}`);
        context.progress(`${workload}: ${system.name} repeat ${repeatIndex + 1}/${repeats} threw: ${(error as Error)?.stack ?? String(error)}`);
      }
    }
  }
  const results: SystemResult[] = [];
  systems.forEach((system, index) => {
    const mine = samples[index]!;
    checks.push({
      name: system.name,
      passed: failures[index]!.length === 0 && mine.length === repeats,
      detail: failures[index]!.length === 0 ? `${mine.length} runs checked` : failures[index]!.join("; "),
    });
    if (mine.length === 0) return;
    const seconds = mine.map((s) => s.seconds);
    const medianSeconds = median(seconds);
    results.push({
      name: system.name,
      samplesSeconds: seconds,
      medianSeconds,
      metric: system.metric(medianSeconds, mine),
      extra: { ...(mine.at(-1)!.extra ?? {}), ...(system.summarize?.(mine) ?? {}) },
    });
  });
  return { systems: results, checks };
}

/** The headline figure of the named system, or NaN when it has none (its runs failed). */
export function metricOf(systems: SystemResult[], name: string): number {
  return systems.find((s) => s.name === name)?.metric.value ?? Number.NaN;
}

export function gigabytesPerSecond(byteLength: number) {
  return (medianSeconds: number): SystemResult["metric"] => ({
    name: "throughput",
    unit: "GB/s",
    value: byteLength / medianSeconds / 1e9,
    higherIsBetter: true,
  });
}

export function secondsMetric(medianSeconds: number): SystemResult["metric"] {
  return { name: "time", unit: "s", value: medianSeconds, higherIsBetter: false };
}

/** Drops a Bun.mmap view and collects it, so its mapping is gone before the next run. */
export function releaseMappings(): void {
  Bun.gc(true);
}
