/**
 * bun-umap as a user without privileges: in a child process run as `nobody` (setpriv), where
 * only user-mode-only userfaultfd can be opened, JavaScript reads work and a system call given
 * an unfilled view fails with EFAULT until the range is prefetched; with the userfaultfd call
 * refused outright (a seccomp filter, as in a container), umap() is a typed error that says what
 * to change. Needs root to switch users; skipped, with the reason printed, elsewhere.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { tempDir, writePatternFile, patternByte, MiB } from "./helpers.ts";

const NOBODY = "65534";
const root = join(import.meta.dir, "..");
const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((path) => existsSync(path));
const isRoot = process.getuid?.() === 0;
const skipReason = !isRoot ? "not running as root, so cannot switch to an unprivileged user" : !setpriv ? "setpriv is not installed" : undefined;
if (skipReason) console.log(`non-root tests skipped: ${skipReason}`);

const dir = tempDir();
const file = join(dir.path, "data.bin");
const FILE_BYTES = 4 * MiB;
const home = join(dir.path, "home");
let noUserfaultfd: string | undefined;
let noUserfaultfdSkip: string | undefined;

beforeAll(() => {
  writePatternFile(file, FILE_BYTES);
  // mkdtemp makes the directory private to root; the unprivileged child must read it, and have
  // a home and temporary directory of its own (Bun writes its C compiler's headers there).
  chmodSync(dir.path, 0o755);
  chmodSync(file, 0o644);
  mkdirSync(home);
  chownSync(home, Number(NOBODY), Number(NOBODY));
  const built = join(dir.path, "no-userfaultfd");
  const gcc = Bun.spawnSync(["gcc", "-O1", "-o", built, join(import.meta.dir, "fixtures", "no-userfaultfd.c")], { stderr: "pipe" });
  if (gcc.success) noUserfaultfd = built;
  else noUserfaultfdSkip = `cannot build the seccomp launcher: ${gcc.stderr.toString().trim() || "gcc is missing"}`;
  if (noUserfaultfdSkip) console.log(`seccomp test skipped: ${noUserfaultfdSkip}`);
});
afterAll(() => dir.remove());

function runAsNobody(script: string, wrapper: string[] = []) {
  return Bun.spawnSync([setpriv!, `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", ...wrapper, process.execPath, "-e", script], {
    cwd: root,
    env: { ...process.env, HOME: home, TMPDIR: home },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 30_000,
  });
}

describe.skipIf(skipReason !== undefined)("as an unprivileged user", () => {
  test("user-mode-only: reads work; a system call on unfilled pages gets EFAULT, and works after prefetch(); the warning says so", () => {
    const out = join(home, "out.bin");
    const result = runAsNobody(`
      import { umap } from "./src/index.ts";
      import { openSync, writeSync } from "node:fs";
      const region = await umap(${JSON.stringify(file)}, { bufferSize: 1 << 20, readAhead: 0 });
      console.log("read", region.bytes[5]);
      const fd = openSync(${JSON.stringify(out)}, "w");
      try { writeSync(fd, region.view(2 << 20, 65536)); console.log("write ok"); }
      catch (error) { console.log("write", error.code); }
      await region.prefetch(2 << 20, 65536);
      console.log("after prefetch wrote", writeSync(fd, region.view(2 << 20, 65536)));
      await region.close();
    `);
    const stdout = result.stdout.toString();
    const stderr = result.stderr.toString();
    expect(result.exitCode).toBe(0);
    expect(stdout).toContain(`read ${patternByte(5)}`);
    expect(stdout).toContain("write EFAULT");
    expect(stdout).toContain("after prefetch wrote 65536");
    expect(stderr).toContain("user-mode-only");
    expect(stderr).toContain("prefetch");
    expect(stderr).toContain("vm.unprivileged_userfaultfd");
  });

  test("with the userfaultfd call refused: ERR_UMAP_UNSUPPORTED naming what to change", () => {
    if (!noUserfaultfd) {
      console.log(`skipped: ${noUserfaultfdSkip}`);
      return;
    }
    const result = runAsNobody(
      `
      import { umap } from "./src/index.ts";
      const error = await umap(${JSON.stringify(file)}).catch((e) => e);
      console.log(error.code);
      console.log(error.message);
    `,
      [noUserfaultfd],
    );
    const stdout = result.stdout.toString();
    expect(result.exitCode).toBe(0);
    expect(stdout).toContain("ERR_UMAP_UNSUPPORTED");
    expect(stdout).toContain("vm.unprivileged_userfaultfd=1");
    expect(stdout).toContain("/dev/userfaultfd");
    expect(stdout).toContain("seccomp");
  });
});
