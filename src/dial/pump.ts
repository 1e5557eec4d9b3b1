/**
 * dial/ — the pump: joins two socket-shaped ends (Bun sockets, tunnel streams, a session's framed connections)
 * and moves bytes both ways with backpressure, half-close and reset propagation. Used by the proxy's listeners
 * (proxy/tcp.ts, whose connection state extends it) and by the tunnel's receiving end; a half-close or
 * backpressure fix made here holds for both.
 *
 *   const p = new Pump();
 *   p.attach(0, clientSocket); p.attach(1, upstreamPipe);
 *   // in the ends' callbacks: p.data(0, chunk), p.drain(0), p.end(0), p.close(reset)
 *
 * - Backpressure: a partial write keeps the rest (one chunk, a view: no copy) and pauses the sending end until
 *   the receiving one drains; memory per pair is bounded by what one read delivered each way (a tunnel stream
 *   may deliver what it had queued after pause(): that is appended, in order).
 * - Half-close: a FIN from one end is passed on with shutdown() once its pending bytes are written; the pair
 *   closes when both directions are done. close(true) resets both ends (RST), close(false) ends them (FIN).
 * - An end may start before the other is attached: what it sends is held and written by attach(), its FIN
 *   passed on, and an end attached after close() is closed the same way.
 */
import { concat } from '../net/bytes.ts';
import type { Pipe } from './contract.ts';

export type End = 0 | 1;

export class Pump {
  /** The ends. Plain fields rather than arrays: a pump is made per proxied connection. */
  end0: Pipe | null = null;
  end1: Pipe | null = null;
  /** Bytes waiting to go INTO end 0 / end 1 (a partial write's rest, or bytes that came before the end was attached). */
  held0: Uint8Array | null = null;
  held1: Uint8Array | null = null;
  /** FIN received FROM end 0 / end 1. */
  fin0 = false;
  fin1 = false;
  closed = false;
  private closedByReset = false;

  /** Called once, after both ends were closed (subclasses override; or pass a callback). */
  constructor(private readonly closedCallback?: (reset: boolean) => void) {}

  protected onClose(reset: boolean): void {
    this.closedCallback?.(reset);
  }

  pipe(end: End): Pipe | null {
    return end === 0 ? this.end0 : this.end1;
  }

  held(end: End): Uint8Array | null {
    return end === 0 ? this.held0 : this.held1;
  }

  private setHeld(end: End, b: Uint8Array | null): void {
    if (end === 0) this.held0 = b;
    else this.held1 = b;
  }

  /** Nothing held either way and no FIN yet: the pair is in steady flow. */
  get flowing(): boolean {
    return !this.held0 && !this.held1 && !this.fin0 && !this.fin1;
  }

  /** Attach an end; see the header for an end attached late. */
  attach(end: End, p: Pipe): void {
    if (end === 0) this.end0 = p;
    else this.end1 = p;
    if (this.closed) {
      if (this.closedByReset) p.terminate();
      else p.end();
      return;
    }
    if (this.held(end)) this.drain(end);
    else if (end === 0 ? this.fin1 : this.fin0) p.shutdown();
  }

  /** Bytes from `from` go to the other end. True when the other end took them all (nothing is held). */
  data(from: End, chunk: Uint8Array): boolean {
    if (this.closed) return false;
    const to: End = from === 0 ? 1 : 0;
    const held = this.held(to);
    if (held) {
      this.setHeld(to, concat(held, chunk)); // keep order: after what waits already
      return false;
    }
    const p = this.pipe(to);
    if (!p) {
      this.setHeld(to, chunk); // not attached yet: attach() writes it
      return false;
    }
    const n = p.write(chunk);
    if (n < chunk.length) {
      this.setHeld(to, chunk.subarray(Math.max(0, n)));
      this.pipe(from)?.pause();
      return false;
    }
    return true;
  }

  /** `end` can take more: write what waits for it, then resume the other end (or pass its FIN on). */
  drain(end: End): void {
    const rest = this.held(end);
    const p = this.pipe(end);
    if (this.closed || !rest || !p) return;
    const n = p.write(rest);
    if (n < rest.length) {
      this.setHeld(end, rest.subarray(Math.max(0, n)));
      return;
    }
    this.setHeld(end, null);
    const other: End = end === 0 ? 1 : 0;
    if (other === 0 ? this.fin0 : this.fin1) p.shutdown();
    else this.pipe(other)?.resume();
    this.finishIfDone();
  }

  /** FIN from `from`: passed on once what waits for the other end is written; closes when both ways are done. */
  end(from: End): void {
    if (this.closed) return;
    if (from === 0) this.fin0 = true;
    else this.fin1 = true;
    const to: End = from === 0 ? 1 : 0;
    if (!this.held(to)) this.pipe(to)?.shutdown(); // not attached yet: attach() passes the FIN on
    this.finishIfDone();
  }

  /** Close both ends: with `reset`, an RST (error propagation), else a FIN. */
  close(reset: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.closedByReset = reset;
    const a = this.end0;
    const b = this.end1;
    if (reset) {
      a?.terminate();
      b?.terminate();
    } else {
      a?.end();
      b?.end();
    }
    this.onClose(reset);
  }

  protected finishIfDone(): void {
    if (this.fin0 && this.fin1 && !this.held0 && !this.held1) this.close(false);
  }
}
