/** Length-prefixed frames from chunks cut anywhere (net/frames.ts): whole, in order, in linear time. */
import { describe, expect, test } from 'bun:test';
import { Frames16 } from '../src/net/frames.ts';

function framed(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(payload.length + 2);
  out[0] = payload.length >> 8;
  out[1] = payload.length & 0xff;
  out.set(payload, 2);
  return out;
}

describe('Frames16', () => {
  test('a 65,535-byte frame sent a byte at a time arrives whole, copying each byte at most twice', () => {
    const payload = new Uint8Array(65535).map((_, i) => (i * 31) & 0xff);
    const wire = framed(payload);
    const f = new Frames16();
    const got: Uint8Array[] = [];
    for (let i = 0; i < wire.length; i++) f.push(wire.subarray(i, i + 1), (fr) => got.push(fr.slice()));
    expect(got.length).toBe(1);
    expect(got[0]!).toEqual(payload);
    // Joining every chunk to what is held would copy ~2.1 billion bytes here.
    expect(f.copied).toBeLessThanOrEqual(2 * wire.length);
    expect(f.buffered).toBe(0);
  });

  test('many frames in one chunk, frames and prefixes split across chunks, empty frames: all in order', () => {
    const payloads = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(300).fill(7), new Uint8Array([9])];
    const wire = new Uint8Array(payloads.reduce((n, p) => n + p.length + 2, 0));
    let o = 0;
    for (const p of payloads) {
      wire.set(framed(p), o);
      o += p.length + 2;
    }
    for (const cuts of [[wire.length], [1, 2, 3, 4, 5, 6, 150, 303, 304, wire.length], [5, 6, wire.length - 1, wire.length]]) {
      const f = new Frames16();
      const got: number[][] = [];
      let from = 0;
      for (const to of cuts) {
        f.push(wire.subarray(from, to), (fr) => got.push([...fr]));
        from = to;
      }
      expect(got).toEqual(payloads.map((p) => [...p]));
      expect(f.buffered).toBe(0);
    }
  });

  test('an incomplete frame is held (at most one frame) until the rest comes', () => {
    const f = new Frames16();
    const got: number[][] = [];
    f.push(new Uint8Array([0, 3, 1]), (fr) => got.push([...fr]));
    expect(got).toEqual([]);
    expect(f.buffered).toBe(3);
    f.push(new Uint8Array([2, 3, 0]), (fr) => got.push([...fr]));
    expect(got).toEqual([[1, 2, 3]]);
    expect(f.buffered).toBe(1);
  });
});
