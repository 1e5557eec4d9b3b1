/**
 * tunnel/ — joins two socket-shaped ends (a Bun socket and a tunnel stream) with backpressure, half-close and
 * reset propagation: the receiving end of the proxy protocol, where there is no balancer, no retry and no HTTP
 * sniffing (those live in proxy/tcp.ts on the sending node).
 */
import { concat } from '../net/bytes.ts';
import type { Pipe } from './pipe.ts';

export type End = 0 | 1;



export class Splice {
  private readonly pipes: [Pipe | null, Pipe | null] = [null, null];
  private readonly pending: [Uint8Array | null, Uint8Array | null] = [null, null]; // bytes waiting to go INTO end i
  private readonly ended: [boolean, boolean] = [false, false]; // FIN received FROM end i
  private closed = false;
  private closedByReset = false;

  constructor(private readonly onClosed: (reset: boolean) => void = () => {}) {}

  /**
   * Attach an end. One end may start before the other is attached (the endpoint socket opens before its tunnel
   * end exists): what it sent is held and written now, its FIN passed on, and if the splice is already closed
   * the new end is closed the same way.
   */
  set(end: End, p: Pipe): void {
    this.pipes[end] = p;
    if (this.closed) {
      if (this.closedByReset) p.terminate();
      else p.end();
      return;
    }
    if (this.pending[end]) this.drain(end);
    else if (this.ended[(1 - end) as End]) p.shutdown();
  }

  data(from: End, chunk: Uint8Array): void {
    if (this.closed) return;
    const to = (1 - from) as End;
    const held = this.pending[to];
    if (held) {
      // A stream may deliver what it had already queued after pause(): keep order, write it after the rest.
      this.pending[to] = concat(held, chunk);
      return;
    }
    const p = this.pipes[to];
    if (!p) {
      this.pending[to] = chunk; // not attached yet: set() writes it
      return;
    }
    const n = p.write(chunk);
    if (n < chunk.length) {
      this.pending[to] = chunk.subarray(Math.max(0, n));
      this.pipes[from]!.pause();
    }
  }

  drain(end: End): void {
    const rest = this.pending[end];
    if (this.closed || !rest) return;
    const n = this.pipes[end]!.write(rest);
    if (n < rest.length) {
      this.pending[end] = rest.subarray(Math.max(0, n));
      return;
    }
    this.pending[end] = null;
    const other = (1 - end) as End;
    if (this.ended[other]) this.pipes[end]!.shutdown();
    else this.pipes[other]!.resume();
    this.finishIfDone();
  }

  end(from: End): void {
    if (this.closed) return;
    this.ended[from] = true;
    const to = (1 - from) as End;
    if (!this.pending[to]) this.pipes[to]?.shutdown(); // not attached yet: set() passes the FIN on
    this.finishIfDone();
  }

  close(reset: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.closedByReset = reset;
    for (const p of this.pipes) {
      if (!p) continue;
      if (reset) p.terminate();
      else p.end();
    }
    this.onClosed(reset);
  }

  private finishIfDone(): void {
    if (this.ended[0] && this.ended[1] && !this.pending[0] && !this.pending[1]) this.close(false);
  }
}
