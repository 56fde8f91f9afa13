/** The umapsort port's sort must be right in plain memory before it can judge the pager. */
import { expect, test } from "bun:test";
import { sortU64InPlace } from "./fixtures/sort-u64.ts";
import { random } from "./helpers.ts";

const shapes: Record<string, (n: number, next: () => number) => bigint[]> = {
  random: (n, next) => Array.from({ length: n }, () => (BigInt(Math.floor(next() * 2 ** 32)) << 32n) | BigInt(Math.floor(next() * 2 ** 32))),
  sorted: (n) => Array.from({ length: n }, (_, i) => BigInt(i) << 31n),
  reversed: (n) => Array.from({ length: n }, (_, i) => BigInt(n - i) << 33n),
  "all equal": (n) => Array.from({ length: n }, () => 7n),
  "few values, equal high words": (n, next) => Array.from({ length: n }, () => BigInt(Math.floor(next() * 3))),
};

test.each(Object.keys(shapes))("sortU64InPlace sorts %s arrays like BigUint64Array.sort", (shape) => {
  for (const n of [0, 1, 2, 17, 1000, 20000]) {
    const values = BigUint64Array.from(shapes[shape]!(n, random(n)));
    const expected = values.slice().sort();
    sortU64InPlace(new Uint32Array(values.buffer));
    expect(values).toEqual(expected);
  }
});
