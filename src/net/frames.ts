/**
 * net/ — frames with a 2-byte big-endian length prefix (DNS over TCP, the tunnel's UDP datagrams), reassembled
 * from chunks cut anywhere. A peer controls where chunks are cut: joining every new chunk to everything held
 * (what a naive reader does) costs O(n²) for a frame sent a byte at a time (64 KiB: ~0.3-0.8 s of CPU, measured).
 * Here chunks are kept in a list and copied once, when a frame is complete, so each byte is copied at most
 * twice (once into the held list when a chunk ends mid-frame, once into the frame), and at most one frame
 * (2 + 65,535 bytes) is ever held.
 *
 *   const frames = new Frames16();
 *   socket.data = (chunk) => frames.push(chunk, (frame) => handle(frame));   // `frame` is only valid during the call
 */
export class Frames16 {
  private parts: Uint8Array[] = [];
  private held = 0;
  /** Bytes copied into reassembly buffers so far (linear in the bytes received; tests check it). */
  copied = 0;

  /** Bytes held for an incomplete frame. */
  get buffered(): number {
    return this.held;
  }

  /** Feed bytes; `emit` gets each whole frame (its payload), in order, valid only for the call. */
  push(chunk: Uint8Array, emit: (frame: Uint8Array) => void): void {
    if (this.held > 0) {
      this.parts.push(chunk);
      this.held += chunk.length;
      const need = this.frameLength();
      if (need < 0 || this.held < need) return;
      chunk = this.join();
    }
    let i = 0;
    while (chunk.length - i >= 2) {
      const len = (chunk[i]! << 8) | chunk[i + 1]!;
      if (chunk.length - i - 2 < len) break;
      emit(chunk.subarray(i + 2, i + 2 + len));
      i += 2 + len;
    }
    if (i < chunk.length) {
      // The rest starts a frame: kept as a copy (the caller's buffer may be reused after this call).
      const rest = chunk.slice(i);
      this.copied += rest.length;
      this.parts = [rest];
      this.held = rest.length;
    }
  }

  /** The whole length (prefix included) of the frame being held, or -1 while its prefix is incomplete. */
  private frameLength(): number {
    if (this.held < 2) return -1;
    const first = this.parts[0]!;
    const hi = first[0]!;
    const lo = first.length > 1 ? first[1]! : this.parts[1]![0]!;
    return 2 + ((hi << 8) | lo);
  }

  /** Everything held, as one buffer (copied once); the list is emptied. */
  private join(): Uint8Array {
    const out = new Uint8Array(this.held);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    this.copied += this.held;
    this.parts = [];
    this.held = 0;
    return out;
  }
}
