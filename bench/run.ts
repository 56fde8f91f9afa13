/**
 * The benchmark suite: `bun bench/run.ts [--quick] [--only NAME[,NAME]] [--out DIR]`.
 *
 * Runs each workload (bench/workloads/), writes its JSON and SVG chart to DIR (default
 * bench/results), and prints one table on stdout. Progress goes to stderr. Exits 1 if any
 * workload's checks failed (a wrong sum, an unsorted array), never for a missed target.
 */
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { DataDir } from "./lib/data.ts";
import { currentLoadAverage, machineFacts } from "./lib/machine.ts";
import { formatTable, writeResult, type WorkloadResult } from "./lib/report.ts";
import type { BenchContext } from "./lib/workload.ts";
import { WORKLOADS } from "./workloads/index.ts";

const USAGE = `usage: bun bench/run.ts [--quick] [--only NAME[,NAME]] [--out DIR] [--repeats N]

Workloads: ${WORKLOADS.map((w) => w.name).join(", ")}
  --quick     small data (tens of MiB), 2 repeats: a smoke test of the whole suite
  --only      run these workloads only
  --out       where to write NAME.json and NAME.svg (default bench/results; with --quick, a
              directory under the system's temporary directory, so a smoke run never
              overwrites the committed results of a full run)
  --repeats   repeats per system (default 5, quick 2; sort and write run at most 3)`;

const benchDir = dirname(new URL(import.meta.url).pathname);

function usageError(message: string): never {
  process.stderr.write(`bench: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string" },
      out: { type: "string" },
      repeats: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
} catch (error) {
  usageError((error as Error).message);
}
const { values } = parsed;
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const quick = values.quick!;
const repeats = values.repeats === undefined ? (quick ? 2 : 5) : Number(values.repeats);
if (!Number.isSafeInteger(repeats) || repeats < 1 || repeats > 100) usageError(`--repeats must be a whole number from 1 to 100, got ${values.repeats}`);
const names = values.only?.split(",").map((name) => name.trim()).filter(Boolean);
for (const name of names ?? []) {
  if (!WORKLOADS.some((w) => w.name === name)) usageError(`--only: no workload named ${JSON.stringify(name)}`);
}
const selected = names ? WORKLOADS.filter((w) => names.includes(w.name)) : WORKLOADS;
const outDir = resolve(values.out ?? (quick ? join(tmpdir(), "bun-umap-bench-quick") : join(benchDir, "results")));

const runStart = Bun.nanoseconds();
function progress(message: string): void {
  const seconds = ((Bun.nanoseconds() - runStart) / 1e9).toFixed(1).padStart(6);
  process.stderr.write(`[${seconds} s] ${message}\n`);
}

const data = new DataDir(progress);
const context: BenchContext = { quick, repeats, data, progress, benchDir };
const results: WorkloadResult[] = [];
let failed = false;
try {
  for (const workload of selected) {
    progress(`${workload.name}: ${workload.description}`);
    const machine = machineFacts();
    const startedAt = new Date().toISOString();
    const started = Bun.nanoseconds();
    const outcome = await workload.run(context);
    machine.loadAverageEnd = currentLoadAverage();
    const result: WorkloadResult = {
      workload: workload.name,
      description: workload.description,
      quick,
      ...outcome,
      machine,
      startedAt,
      wallSeconds: (Bun.nanoseconds() - started) / 1e9,
    };
    const { jsonPath } = writeResult(outDir, result);
    results.push(result);
    const bad = result.checks.filter((c) => !c.passed);
    if (bad.length > 0) failed = true;
    progress(`${workload.name}: done in ${result.wallSeconds.toFixed(1)} s, ${bad.length === 0 ? "checks passed" : `${bad.length} CHECKS FAILED`}; ${jsonPath}`);
  }
} finally {
  data.remove();
}
process.stdout.write(formatTable(results) + "\n");
process.exit(failed ? 1 : 0);
