/**
 * Byte-range layout over a sequence of extents (shard files, concatenated files, objects): a
 * store's [byteOffset, byteOffset + byteLength) cut into the pieces each extent holds. Every
 * store made of parts shares this, so a range that straddles two parts is split in one place.
 */
export interface Extent {
  /** Where the extent starts in the store. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** One extent's share of a range. */
export interface Piece {
  readonly extentIndex: number;
  /** Where the piece starts inside its extent. */
  readonly extentOffset: number;
  /** Where the piece starts inside the caller's buffer (from the range's start). */
  readonly bufferOffset: number;
  readonly byteLength: number;
}

/** Extents laid end to end, no gaps, from their lengths (empty ones hold no bytes). */
export function extentsFromLengths(byteLengths: readonly number[]): Extent[] {
  let byteOffset = 0;
  return byteLengths.map((byteLength) => {
    const extent = { byteOffset, byteLength };
    byteOffset += byteLength;
    return extent;
  });
}

/**
 * The pieces of [byteOffset, byteOffset + byteLength), in order, over extents laid end to end
 * (extentsFromLengths). Empty extents give no pieces. The range must lie inside the extents.
 */
export function* variablePieces(extents: readonly Extent[], byteOffset: number, byteLength: number): Generator<Piece> {
  let extentIndex = lastExtentAtOrBefore(extents, byteOffset);
  let done = 0;
  while (done < byteLength) {
    const extent = extents[extentIndex];
    if (extent === undefined) throw new RangeError(`byte ${byteOffset + done} is past the last extent`);
    const extentOffset = byteOffset + done - extent.byteOffset;
    const take = Math.min(extent.byteLength - extentOffset, byteLength - done);
    if (take > 0) {
      yield { extentIndex, extentOffset, bufferOffset: done, byteLength: take };
      done += take;
    }
    extentIndex++;
  }
}

/** Index of the last extent that starts at or before byteOffset (binary search). */
function lastExtentAtOrBefore(extents: readonly Extent[], byteOffset: number): number {
  let low = 0;
  let high = extents.length - 1;
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (extents[mid]!.byteOffset <= byteOffset) low = mid;
    else high = mid - 1;
  }
  return low;
}

/** The pieces of [byteOffset, byteOffset + byteLength) over extents of extentBytes each. */
export function* fixedPieces(extentBytes: number, byteOffset: number, byteLength: number): Generator<Piece> {
  let done = 0;
  while (done < byteLength) {
    const extentIndex = Math.floor((byteOffset + done) / extentBytes);
    const extentOffset = byteOffset + done - extentIndex * extentBytes;
    const take = Math.min(extentBytes - extentOffset, byteLength - done);
    yield { extentIndex, extentOffset, bufferOffset: done, byteLength: take };
    done += take;
  }
}
