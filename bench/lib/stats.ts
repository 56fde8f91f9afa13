/**
 * Timing and summary statistics for the benchmarks: nanosecond clocks, medians, percentiles,
 * and the alternation order that keeps one system from always running on a warmer machine.
 */

/** Nanoseconds from Bun's monotonic clock. */
export function nowNs(): number {
  return Bun.nanoseconds();
}

/** Seconds taken by fn (awaited), and what it returned. */
export async function timed<T>(fn: () => T | Promise<T>): Promise<{ seconds: number; value: T }> {
  const startNs = nowNs();
  const value = await fn();
  return { seconds: (nowNs() - startNs) / 1e9, value };
}

/** The value at fraction q (0..1) of the sorted samples, by nearest rank. */
export function percentile(samples: readonly number[], q: number): number {
  if (samples.length === 0) throw new RangeError("percentile of no samples");
  if (!(q >= 0 && q <= 1)) throw new RangeError(`percentile fraction must be in [0, 1], got ${q}`);
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

/** The median: the mean of the two middle samples for an even count. */
export function median(samples: readonly number[]): number {
  if (samples.length === 0) throw new RangeError("median of no samples");
  const sorted = Float64Array.from(samples).sort();
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/**
 * The order in which to run `count` systems in repeat number `repeatIndex`: repeat r starts with
 * system r (mod count), and odd repeats run backwards, so no system always goes first or always
 * follows the same neighbour (whose page cache or heap it would inherit).
 */
export function alternation(count: number, repeatIndex: number): number[] {
  const odd = repeatIndex % 2 === 1;
  // Backwards from start+1 means starting at `start` after the reversal.
  const shift = odd ? repeatIndex + 1 : repeatIndex;
  const order = Array.from({ length: count }, (_, i) => (i + shift) % count);
  return odd ? order.reverse() : order;
}

/** A deterministic pseudo-random generator (xorshift32) with a fixed seed. */
export function xorshift32(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}
