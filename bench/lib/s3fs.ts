/**
 * An s3fs FUSE mount of a bucket on a loopback S3 server, for the s3 workload's kernel-mapped
 * peer. s3fs runs in the foreground (-f) as a child of this process, so it is ended by its own
 * pid; its log goes to a file, never to a pipe: while the main thread is parked in a page fault
 * on the mount, nothing would drain a pipe, and s3fs blocked on writing to it would never answer
 * the fault.
 */
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** How long a mount may take to show the bucket's objects. */
const MOUNT_TIMEOUT_MS = 15_000;
const UNMOUNT_TIMEOUT_MS = 5_000;
const UNMOUNT_ATTEMPTS = 10;

export interface S3fsMount {
  /** The mount point: objects appear as files under it. */
  readonly path: string;
  unmount(): Promise<void>;
}

export interface S3fsTarget {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** An object that must be visible before the mount counts as ready. */
  key: string;
  /** A directory of this run: the mount point, the password file and the log go under it. */
  workDir: string;
  /** Distinguishes the mounts of one run (each gets its own mount point). */
  name: string;
}

/** Why s3fs cannot run here, or null if it might: the device and the binaries. */
export function s3fsUnavailable(): string | null {
  if (!existsSync("/dev/fuse")) return "/dev/fuse does not exist (no FUSE device in this machine or container)";
  if (!Bun.which("s3fs")) return "s3fs is not installed (Debian package s3fs)";
  if (!Bun.which("fusermount") && !Bun.which("fusermount3")) return "fusermount is not installed (Debian package fuse)";
  return null;
}

/** Mounts the bucket, or resolves with the exact reason it could not. */
export async function mountS3fs(target: S3fsTarget): Promise<S3fsMount | string> {
  const unavailable = s3fsUnavailable();
  if (unavailable) return unavailable;
  const mountPoint = join(target.workDir, `s3fs-${target.name}`);
  const passwordPath = join(target.workDir, `s3fs-${target.name}.passwd`);
  const logPath = join(target.workDir, `s3fs-${target.name}.log`);
  Bun.spawnSync(["mkdir", "-p", mountPoint]);
  // s3fs refuses a password file that others can read.
  writeFileSync(passwordPath, `${target.accessKeyId}:${target.secretAccessKey}\n`, { mode: 0o600 });
  const child = Bun.spawn(
    [
      "s3fs", target.bucket, mountPoint, "-f",
      "-o", `url=${target.endpoint},use_path_request_style,passwd_file=${passwordPath}`,
    ],
    { stdin: "ignore", stdout: Bun.file(logPath), stderr: Bun.file(logPath) },
  );
  const objectPath = join(mountPoint, target.key);
  const deadlineMs = performance.now() + MOUNT_TIMEOUT_MS;
  let ready = false;
  while (!ready && performance.now() < deadlineMs && child.exitCode === null) {
    await Bun.sleep(50);
    ready = isMountPoint(mountPoint) && existsSync(objectPath);
  }
  const unmount = async () => {
    // fusermount -u ends a foreground s3fs; the kill is for one that did not go.
    const fusermount = Bun.which("fusermount") ?? Bun.which("fusermount3")!;
    // A mapping of a file under the mount that the collector has not yet freed keeps it busy:
    // collect and try again, a bounded number of times, before detaching it lazily.
    for (let attempt = 0; attempt < UNMOUNT_ATTEMPTS && isMountPoint(mountPoint); attempt++) {
      if (attempt > 0) {
        Bun.gc(true);
        await Bun.sleep(100);
      }
      Bun.spawnSync([fusermount, "-u", mountPoint], { timeout: UNMOUNT_TIMEOUT_MS, stderr: "ignore" });
    }
    if (isMountPoint(mountPoint)) Bun.spawnSync(["umount", "-l", mountPoint], { timeout: UNMOUNT_TIMEOUT_MS });
    await Promise.race([child.exited, Bun.sleep(UNMOUNT_TIMEOUT_MS)]);
    if (child.exitCode === null) child.kill(9);
  };
  if (!ready) {
    await unmount();
    const log = existsSync(logPath) ? readFileSync(logPath, "utf8").trim().split("\n").slice(-3).join(" / ") : "";
    return child.exitCode !== null && child.exitCode !== 0
      ? `s3fs exited with status ${child.exitCode}${log ? `: ${log}` : ""}`
      : `the s3fs mount did not show ${target.key} within ${MOUNT_TIMEOUT_MS} ms${log ? ` (log: ${log})` : ""}`;
  }
  return { path: mountPoint, unmount };
}

/** A mounted directory is on another device than its parent. */
function isMountPoint(path: string): boolean {
  try {
    return statSync(path).dev !== statSync(join(path, "..")).dev;
  } catch {
    return false;
  }
}
