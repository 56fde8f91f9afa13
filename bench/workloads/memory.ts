/**
 * memory: the peak resident set size of a seq-warm scan and of the sort, each in a fresh
 * process (bench/lib/memory-child.ts), for umap against its bufferSize, and for the peers
 * (Bun.mmap's file pages and the in-memory sort's array count as resident too).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { GiB, MiB, checkSortedFile, warmPageCache } from "../lib/data.ts";
import { target, type SystemResult, type Target } from "../lib/report.ts";
import { runSystems, type BenchContext, type Sample, type SystemSpec, type Workload } from "../lib/workload.ts";

/** A child that has not finished by then is killed and the run fails. */
const CHILD_TIMEOUT_MS = 10 * 60_000;

interface ChildOutcome {
  baselineRssBytes: number;
  peakRssBytes: number;
  seconds: number;
  problem: string | null;
}

function runChild(context: BenchContext, job: Record<string, unknown>): ChildOutcome {
  const child = Bun.spawnSync([process.execPath, join(context.benchDir, "lib", "memory-child.ts"), JSON.stringify(job)], {
    stdout: "pipe",
    stderr: "pipe",
    timeout: CHILD_TIMEOUT_MS,
  });
  if (child.exitCode !== 0) {
    throw new Error(`memory child ${String(job.mode)} exited with ${child.exitCode ?? child.signalCode}: ${child.stderr.toString().slice(-2000)}`);
  }
  return JSON.parse(child.stdout.toString().trim().split("\n").at(-1)!) as ChildOutcome;
}

function toSample(outcome: ChildOutcome, problem: string | null = outcome.problem): Sample {
  return {
    seconds: outcome.seconds,
    problem,
    extra: { peakRssMiB: outcome.peakRssBytes / MiB, baselineRssMiB: outcome.baselineRssBytes / MiB, growthMiB: (outcome.peakRssBytes - outcome.baselineRssBytes) / MiB },
  };
}

const peakMetric = (_median: number, samples: Sample[]): SystemResult["metric"] => ({
  name: "peak RSS",
  unit: "MiB",
  value: Math.max(...samples.map((s) => Number(s.extra!.peakRssMiB))),
  higherIsBetter: false,
});

export const memory: Workload = {
  name: "memory",
  description: "peak resident memory of a seq-warm scan and of the sort, each in a fresh process",
  async run(context) {
    const scanBytes = context.quick ? 32 * MiB : 1 * GiB;
    const scanBuffer = context.quick ? 8 * MiB : 256 * MiB;
    const sortBytes = context.quick ? 16 * MiB : 256 * MiB;
    const sortBuffer = sortBytes / 4;
    const pageSize = 1 * MiB;
    const scanFile = context.data.float64File(scanBytes);
    const sortFile = context.data.u64File(sortBytes);
    const scanJob = { path: scanFile.path, byteLength: scanBytes, expectedSum: scanFile.sum };
    const sortRun = (mode: string, extra: Record<string, unknown>) => {
      const path = context.data.copy(sortFile.path, "memory-sort");
      try {
        const outcome = runChild(context, { mode, path, byteLength: sortBytes, ...extra });
        // The in-memory sort does not write the file back; umap's must have.
        return toSample(outcome, outcome.problem ?? (mode === "umap-sort" ? checkSortedFile(path, sortFile.checksum) : null));
      } finally {
        rmSync(path, { force: true });
      }
    };
    const systems: SystemSpec[] = [
      {
        name: "umap seq-warm 1 MiB",
        run: async () => (warmPageCache(scanFile.path), toSample(runChild(context, { ...scanJob, mode: "umap-scan", pageSize, bufferSize: scanBuffer }))),
        metric: peakMetric,
      },
      { name: "Bun.mmap seq-warm", run: async () => (warmPageCache(scanFile.path), toSample(runChild(context, { ...scanJob, mode: "mmap-scan" }))), metric: peakMetric },
      { name: "umap sort 1 MiB", run: async () => sortRun("umap-sort", { pageSize, bufferSize: sortBuffer }), metric: peakMetric },
      { name: "in-memory sort", run: async () => sortRun("memory-sort", {}), metric: peakMetric },
    ];
    // Peak memory hardly varies between runs; one or two are enough.
    const repeats = Math.min(2, context.repeats);
    const { systems: results, checks } = await runSystems(context, "memory", systems, repeats);
    const peakOf = (name: string) => results.find((s) => s.name === name)?.metric.value ?? Number.NaN;
    const targets: Target[] = [
      target(`umap seq-warm peak RSS (MiB) vs bufferSize ${scanBuffer / MiB} MiB + 100 MiB`, peakOf("umap seq-warm 1 MiB"), "at most", scanBuffer / MiB + 100),
      target(`umap sort peak RSS (MiB) vs bufferSize ${sortBuffer / MiB} MiB + 100 MiB`, peakOf("umap sort 1 MiB"), "at most", sortBuffer / MiB + 100),
    ];
    return {
      parameters: { scanBytes, scanBuffer, sortBytes, sortBuffer, pageSize, repeats },
      systems: results,
      ratios: [],
      targets,
      checks,
      notes: [
        "Peak RSS is VmHWM after resetting it (clear_refs 5) once the runtime and the library are loaded; the baseline RSS at that point is in each system's extra.",
        "The figure is the largest peak over the repeats; the time is the child's whole run, for reference only.",
      ],
    };
  },
};
