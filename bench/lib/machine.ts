/** Facts about the machine a run took place on, for the results' JSON. */
import { cpus, freemem, loadavg, release, totalmem } from "node:os";
import { readFileSync, writeFileSync } from "node:fs";

export interface MachineFacts {
  cores: number;
  cpuModel: string;
  memoryBytes: number;
  freeMemoryBytes: number;
  kernel: string;
  bunVersion: string;
  /** 1, 5 and 15 minute load averages when the workload started and ended. */
  loadAverageStart: number[];
  loadAverageEnd?: number[];
  /** Transparent huge pages setting, which changes what the kernel's mmap peers cost. */
  transparentHugePages: string;
}

export function machineFacts(): MachineFacts {
  const cpuList = cpus();
  return {
    cores: cpuList.length,
    cpuModel: cpuList[0]?.model ?? "unknown",
    memoryBytes: totalmem(),
    freeMemoryBytes: freemem(),
    kernel: release(),
    bunVersion: Bun.version,
    loadAverageStart: loadavg().map(round2),
    transparentHugePages: readOr("/sys/kernel/mm/transparent_hugepage/enabled", "unknown").trim(),
  };
}

export function currentLoadAverage(): number[] {
  return loadavg().map(round2);
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return fallback;
  }
}

/** A field of /proc/self/status in bytes (VmRSS, VmHWM, ...). */
export function procStatusBytes(field: string): number {
  const status = readFileSync("/proc/self/status", "utf8");
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
  if (!match) throw new Error(`/proc/self/status has no ${field}`);
  return Number(match[1]) * 1024;
}

/**
 * Resets the peak resident set size (VmHWM) to the current one, so a later VmHWM is the peak of
 * what ran in between (Linux 4.0+: writing 5 to clear_refs). Returns false where that fails.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}
