/**
 * gateway/ — connections to backends over dial/ pipes (a local socket or a tunnel stream), kept alive between
 * requests. A connection carries one exchange at a time; the client connection that holds it receives its
 * events (server.ts parses the response). Idle connections wait per endpoint and close after 30 s.
 */
import type { Pipe, PipeHandlers } from '../dial/contract.ts';

const IDLE_MS = 30_000;

/** Who hears a backend connection's events while it carries an exchange. */
export interface UpstreamOwner {
  upData(chunk: Uint8Array): void;
  upDrain(): void;
  upEnd(): void;
  upClose(reset: boolean): void;
}

export class UpstreamConn implements PipeHandlers {
  pipe: Pipe | null = null;
  owner: UpstreamOwner | null = null;
  closed = false;
  /** The backend ended its side (FIN): never reused. */
  ended = false;
  /** Exchanges completed on this connection (0: fresh). */
  uses = 0;
  idleSince = 0;
  /** Reading paused for backpressure (pause/resume reach the socket only on a change: each is a syscall). */
  private paused = false;

  constructor(readonly key: string, private readonly pool: UpstreamPool) {}

  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.pipe?.pause();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.pipe?.resume();
  }

  data(chunk: Uint8Array): void {
    if (this.owner) this.owner.upData(chunk);
    else this.pipe?.terminate(); // bytes outside an exchange: not HTTP/1.1 as agreed; never reuse it
  }

  drain(): void {
    this.owner?.upDrain();
  }

  end(): void {
    this.ended = true;
    if (this.owner) this.owner.upEnd();
    else this.pipe?.end();
  }

  close(reset: boolean): void {
    this.closed = true;
    this.pool.forget(this);
    const o = this.owner;
    this.owner = null;
    o?.upClose(reset);
  }
}

/** Idle keep-alive connections per endpoint key. */
export class UpstreamPool {
  private idle = new Map<string, UpstreamConn[]>();
  private sweep: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly maxIdlePerEndpoint = 64) {}

  /** An idle connection to `key`, or null. */
  take(key: string): UpstreamConn | null {
    const list = this.idle.get(key);
    while (list?.length) {
      const c = list.pop()!;
      if (!c.closed && !c.ended) return c;
    }
    return null;
  }

  create(key: string): UpstreamConn {
    return new UpstreamConn(key, this);
  }

  /** The exchange on `c` is over: keep it for the next one, or close it. */
  release(c: UpstreamConn, reusable: boolean): void {
    c.owner = null;
    c.uses++;
    if (!reusable || c.closed || c.ended) {
      c.pipe?.end();
      return;
    }
    let list = this.idle.get(c.key);
    if (!list) this.idle.set(c.key, (list = []));
    if (list.length >= this.maxIdlePerEndpoint) {
      c.pipe?.end();
      return;
    }
    c.idleSince = Date.now();
    c.resume();
    list.push(c);
    this.armSweep();
  }

  forget(c: UpstreamConn): void {
    const list = this.idle.get(c.key);
    if (!list) return;
    const i = list.indexOf(c);
    if (i >= 0) list.splice(i, 1);
  }

  get idleCount(): number {
    let n = 0;
    for (const l of this.idle.values()) n += l.length;
    return n;
  }

  close(): void {
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = null;
    for (const list of this.idle.values()) for (const c of list) c.pipe?.end();
    this.idle.clear();
  }

  private armSweep(): void {
    if (this.sweep) return;
    this.sweep = setInterval(() => {
      const cutoff = Date.now() - IDLE_MS;
      let left = 0;
      for (const [key, list] of this.idle) {
        const keep = list.filter((c) => {
          if (c.idleSince >= cutoff && !c.closed) return true;
          c.pipe?.end();
          return false;
        });
        if (keep.length) this.idle.set(key, keep);
        else this.idle.delete(key);
        left += keep.length;
      }
      if (!left && this.sweep) {
        clearInterval(this.sweep);
        this.sweep = null;
      }
    }, 5000);
    this.sweep.unref?.();
  }
}
