/** net/ — byte helpers the data paths share. */

/** `a` then `b` in one new buffer; `b` itself when there is nothing before it (no copy). */
export function concat(a: Uint8Array | null, b: Uint8Array): Uint8Array {
  if (!a || a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
