/**
 * dial/ — connecting to a local endpoint (one on this node, or any address reached without the tunnel): one
 * Bun.connect per attempt, a connect deadline, and retries of the same address. Used by the proxy's listeners
 * (one attempt per endpoint: a failure goes back to the balancer for another) and by the tunnel's receiving end
 * (three attempts, as the original's receiver makes).
 *
 *   const local = new LocalDialer({ timeoutMs: 5000, attempts: 3 });
 *   const attempt = local.dial('10.244.1.7', 80, sink);   // sink.localOpened(socket) or sink.localFailed(why)
 *   local.cancel(attempt);                                 // the client left: a late socket is closed unowned
 *
 * Why one shared handler object and one sweep: building a set of closures and arming a timer per connection cost
 * ~2% each of a proxied connection's CPU at tens of thousands of new connections per second; a local connect
 * takes microseconds, so the sweep (every tenth of the timeout, 10-100 ms) nearly never finds anything to end.
 * A socket feeds its sink from the moment it opens; TCP_NODELAY is Bun's default on connect.
 */
import type { Socket } from 'bun';

/** Who receives a local socket's events (the proxy's connection, or the tunnel receiver's pump). */
export interface LocalSink {
  /** Connected. Return false to refuse the socket (its owner has gone): it is closed unowned. */
  localOpened(s: LocalSocket): boolean;
  /** Every attempt failed; `why` is the last failure. */
  localFailed(why: string): void;
  localData(chunk: Uint8Array): void;
  localDrain(): void;
  /** FIN from the endpoint. */
  localEnd(): void;
  /** The socket is gone; `reset` when it ended with an error. */
  localClose(reset: boolean): void;
  /** Bun's socket deadline fired (the owner armed it with socket.timeout()); see net/idle.ts. */
  localTimeout?(s: LocalSocket): void;
}

/** One dial: its target, its sink and its attempts. Returned by dial() for cancel(). */
export interface LocalDial {
  readonly sink: LocalSink;
  readonly ip: string;
  readonly port: number;
  /** Attempts started so far (1-based). */
  n: number;
  /** The attempt in flight; null once the dial is over (opened, failed or cancelled). */
  current: LocalAttempt | null;
  /** Null only for the detached placeholder (a socket its owner let go of). */
  readonly dialer: LocalDialer | null;
}

/** One connect attempt: a socket's `data` while it connects and after. */
export interface LocalAttempt {
  readonly dial: LocalDial;
  /** When this attempt started (Date.now()). */
  since: number;
  /** Over (opened, failed, timed out or cancelled): a late socket of it is terminated. */
  done: boolean;
}

export type LocalSocket = Socket<LocalAttempt>;

export interface LocalDialerOptions {
  /** How long one connect attempt may take. */
  timeoutMs: number;
  /** Attempts per dial (default 1). */
  attempts?: number;
  /** Pause between attempts (default 100 ms: a refused port fails fast, a black hole waits for the timeout). */
  retryDelayMs?: number;
}

/** The sink of sockets whose owner let go of them (handed over elsewhere, or late): every event is ignored. */
const NO_SINK: LocalSink = {
  localOpened: () => false, localFailed: () => {}, localData: () => {}, localDrain: () => {}, localEnd: () => {}, localClose: () => {},
};

/** What a socket points at once its owner let go of it: nothing reaches anyone. */
export function detach(s: LocalSocket): void {
  s.data = DETACHED;
}

export class LocalDialer {
  private readonly pending = new Set<LocalAttempt>();
  private sweep: ReturnType<typeof setInterval> | null = null;
  private readonly attempts: number;
  private readonly retryDelayMs: number;

  constructor(private readonly o: LocalDialerOptions) {
    this.attempts = Math.max(1, o.attempts ?? 1);
    this.retryDelayMs = o.retryDelayMs ?? 100;
  }

  /** Start dialing; the sink hears localOpened or localFailed, then the socket's events. */
  dial(ip: string, port: number, sink: LocalSink): LocalDial {
    const d: LocalDial = { sink, ip, port, n: 0, current: null, dialer: this };
    this.attempt(d);
    return d;
  }

  /** The owner gave up on this dial: no callbacks come from it, and a socket that opens late is closed. */
  cancel(d: LocalDial | null): void {
    const a = d?.current;
    if (!a) return;
    d.current = null;
    a.done = true;
    this.pending.delete(a);
  }

  /** Connect deadlines stop and dials in flight are dropped (sockets already handed to sinks are their owners'). */
  stop(): void {
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = null;
    for (const a of this.pending) {
      a.done = true;
      a.dial.current = null;
    }
    this.pending.clear();
  }

  private attempt(d: LocalDial): void {
    const a: LocalAttempt = { dial: d, since: Date.now(), done: false };
    d.n++;
    d.current = a;
    this.pending.add(a);
    this.armSweep();
    // The typings allow only "buffer" as binaryType here; the shared handlers ask for "uint8array".
    Bun.connect<LocalAttempt>({ hostname: d.ip, port: d.port, allowHalfOpen: true, data: a, socket: HANDLERS as unknown as Bun.SocketHandler<LocalAttempt> })
      .catch(() => {}); // reported through connectError
  }

  /** @internal The attempt's socket connected. */
  opened(s: LocalSocket): void {
    const a = s.data;
    if (a.done) {
      detach(s);
      s.terminate();
      return;
    }
    a.done = true;
    a.dial.current = null;
    this.pending.delete(a);
    if (!a.dial.sink.localOpened(s)) {
      detach(s);
      s.terminate();
    }
  }

  /** @internal Attempt `a` failed: try again after retryDelayMs, or tell the sink. */
  failed(a: LocalAttempt, why: string): void {
    if (a.done) return;
    a.done = true;
    this.pending.delete(a);
    const d = a.dial;
    if (d.n >= this.attempts) {
      d.current = null;
      d.sink.localFailed(why);
      return;
    }
    // Still "current" while waiting (cancel() then stops the retry through `done`).
    const timer = setTimeout(() => {
      if (d.current === a) this.attempt(d);
    }, this.retryDelayMs);
    timer.unref?.();
  }

  private armSweep(): void {
    if (this.sweep) return;
    const ms = this.o.timeoutMs;
    this.sweep = setInterval(() => {
      const now = Date.now();
      for (const a of this.pending) if (now - a.since >= ms) this.failed(a, `connect timeout after ${ms} ms`);
      if (this.pending.size === 0 && this.sweep) {
        clearInterval(this.sweep);
        this.sweep = null;
      }
    }, Math.max(10, Math.min(100, ms / 10)));
  }
}

const DETACHED: LocalAttempt = { dial: { sink: NO_SINK, ip: '', port: 0, n: 0, current: null, dialer: null }, since: 0, done: true };

/** One handler object for every local socket (state lives in socket.data). */
const HANDLERS: Bun.SocketHandler<LocalAttempt, 'uint8array'> = {
  binaryType: 'uint8array',
  open: (s) => s.data.dial.dialer?.opened(s),
  connectError: (s, err) => s.data.dial.dialer?.failed(s.data, err.message),
  data: (s, chunk) => s.data.dial.sink.localData(chunk),
  drain: (s) => s.data.dial.sink.localDrain(),
  end: (s) => s.data.dial.sink.localEnd(),
  timeout: (s) => s.data.dial.sink.localTimeout?.(s),
  error: (s) => s.data.dial.sink.localClose(true),
  // Bun reports a reset (ECONNRESET) here, with the error, rather than through error().
  close: (s, err) => s.data.dial.sink.localClose(!!err),
};
