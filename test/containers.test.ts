/**
 * The container files: the seccomp profile is what Docker's `--security-opt seccomp=...` loads,
 * so it must be valid JSON that lets userfaultfd and every call the engine makes through, and
 * still refuse what a container's default profile refuses.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dir, "..");

interface Rule {
  names: string[];
  action: string;
  args?: unknown[];
}
interface Profile {
  defaultAction: string;
  architectures: string[];
  syscalls: Rule[];
}

const profile = JSON.parse(readFileSync(join(root, "userfaultfd.json"), "utf8")) as Profile;
/** Calls allowed whatever their arguments. */
const allowed = new Set(profile.syscalls.filter((rule) => rule.action === "SCMP_ACT_ALLOW" && !rule.args).flatMap((rule) => rule.names));

describe("userfaultfd.json (seccomp profile)", () => {
  test("refuses by default and names the architectures it covers", () => {
    expect(profile.defaultAction).toBe("SCMP_ACT_ERRNO");
    expect(profile.architectures).toContain("SCMP_ARCH_X86_64");
    expect(profile.architectures).toContain("SCMP_ARCH_AARCH64");
    for (const rule of profile.syscalls) {
      expect(Array.isArray(rule.names) && rule.names.length > 0).toBe(true);
      expect(rule.action).toMatch(/^SCMP_ACT_(ALLOW|ERRNO)$/);
    }
  });

  test("allows userfaultfd, and the calls the engine and its workers make", () => {
    const needed = ["userfaultfd", "ioctl", "mmap", "munmap", "madvise", "poll", "ppoll", "eventfd2", "read", "write", "pread64", "pwrite64", "futex", "fsync", "openat", "close", "fcntl"];
    expect(needed.filter((name) => !allowed.has(name))).toEqual([]);
    // Threads (the monitor, Bun's workers) need clone, allowed without namespace flags.
    const clone = profile.syscalls.find((rule) => rule.names.includes("clone") && rule.action === "SCMP_ACT_ALLOW");
    expect(clone?.args?.length).toBe(1);
  });

  test("still refuses what containers refuse by default", () => {
    for (const name of ["ptrace", "mount", "unshare", "setns", "kexec_load", "init_module", "bpf", "reboot"]) {
      expect(allowed.has(name)).toBe(false);
    }
  });

  test("the Dockerfile shows how to run with it", () => {
    const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
    expect(dockerfile).toContain("--security-opt seccomp=userfaultfd.json");
    expect(dockerfile).toMatch(/^FROM /m);
  });
});
