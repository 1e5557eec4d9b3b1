/**
 * proxy/ — the TCP data path of one service port: accept, choose an endpoint, dial, splice.
 *
 * - While the upstream connects, the client's first bytes are kept (a request head, usually) and replayed on open;
 *   past EARLY_LIMIT the client is paused and the rest waits in the kernel. Not pausing by default saves the
 *   four epoll_ctl calls a pause/resume pair costs per connection. The pair is joined in the upstream's `open`.
 * - A failed dial (refused, timeout) excludes that endpoint and asks the balancer again, at most `maxAttempts`
 *   times; then the client is closed cleanly (FIN).
 * - Bytes move through the pump (dial/pump.ts, which each connection's state extends): backpressure, half-close
 *   and reset propagation as on every pair of ends. Local endpoints are dialed by dial/local.ts.
 * - TCP_NODELAY on both sides (Bun sets it on accepted and connected sockets itself); optional idle timeout
 *   (idle: no bytes either way; Bun's socket deadline alone would close busy connections too, net/idle.ts).
 * - Only when a hashing policy needs it (header, cookie or query), the first request head is read before the
 *   endpoint is chosen (bounded by MAX_HEAD and sniffTimeoutMs), kept as raw bytes and replayed: keep-alive,
 *   pipelining and bodies pass untouched; routing is per connection. The HTTP stage (http.ts) finds the key and
 *   announces a generated cookie in the first response head.
 * - Bulk: a connection that has moved `bulkBytes` with nothing buffered is handed to the splice worker
 *   (splicer.ts: splice(2) off the main thread, no copies into JavaScript); its slot is freed when the worker
 *   reports it closed.
 */
import type { Socket, TCPSocketListener } from 'bun';
import type { Pipe, PipeHandlers, RemoteDialer } from '../dial/contract.ts';
import { type LocalDial, LocalDialer, type LocalSink, type LocalSocket, detach } from '../dial/local.ts';
import { Pump } from '../dial/pump.ts';
import type { Balancer, LbEndpoint } from '../lb/balancer.ts';
import { concat } from '../net/bytes.ts';
import { idleFor } from '../net/idle.ts';
import type { Logger } from '../obs/logger.ts';
import { type CookieAnnouncer, MAX_HEAD, decideFromHead, headEnd, looksLikeHttp } from './http.ts';
import type { BulkSplicer } from './splicer.ts';

/**
 * A protocol that decides the target itself from the first bytes (SOCKS5): it may answer the client while
 * deciding, then names the target and the bytes left over for it.
 */
export interface RouteHook {
  /** All bytes received so far; 'more' to wait for more, null to close, or the target. */
  decide(client: Socket<unknown>, buffered: Uint8Array): 'more' | null | { target: LbEndpoint; rest: Uint8Array };
  /** The target is connected: e.g. send the protocol's success reply. */
  connected?(client: Socket<unknown>): void;
  /** The target could not be connected: e.g. send the protocol's failure reply (the client is closed after). */
  failed?(client: Socket<unknown>): void;
  /** How long the client may take to say where it wants to go. */
  timeoutMs: number;
}

/** What the TCP path needs of the tunnel (dial/contract.ts). */
export type TcpRemoteDialer = Pick<RemoteDialer, 'open' | 'takesEarly'>;

export interface TcpPortOptions {
  host: string;
  /** 0 = kernel-assigned (the original's model). */
  port: number;
  balancer: Balancer;
  logger: Logger;
  /** Whether an endpoint can be dialed from here (dial/route.ts); false sends the dial to `remote` (the tunnel). */
  isLocal: (ep: LbEndpoint) => boolean;
  /** Opens a byte pipe to an endpoint on another node; absent = such endpoints count as failed dials. */
  remote?: TcpRemoteDialer;
  connectTimeoutMs: number;
  /** Seconds without traffic in either direction before both sides are closed; 0 = never. */
  idleTimeoutSec: number;
  maxAttempts: number;
  /** How long to wait for a request head when a hashing policy needs one. */
  sniffTimeoutMs?: number;
  /** Targets chosen by a protocol handshake instead of the balancer (the balancer then only counts). */
  route?: RouteHook;
  /** The splice(2) worker for bulk connections (started by its owner); absent = everything stays in JavaScript. */
  splicer?: BulkSplicer;
  /** Bytes a connection moves (both ways) before it is handed to the splicer. */
  bulkBytes?: number;
}

/**
 * How long a connection to a remote endpoint waits for the client's first bytes before opening the tunnel
 * without them. Client-first protocols (HTTP, TLS, most others) send at once, and the bytes then cross with the
 * CONNECT; a server-first one (SSH, SMTP) pays this once per connection.
 */
const FIRST_BYTES_WAIT_MS = 1;

export interface TcpPortStats {
  accepted: number;
  active: number;
  dialFailures: number;
  noEndpoint: number;
  remoteDials: number;
  bytesUp: number;
  bytesDown: number;
  /** Connections handed to the splice worker. */
  spliced: number;
}

type Side = 'client' | 'upstream';

/** Bytes kept from a client whose upstream is still connecting before the client is paused. */
const EARLY_LIMIT = 64 * 1024;

/**
 * One proxied connection: a pump whose end 0 is the client and end 1 the upstream (a Bun socket to a local
 * endpoint, or a tunnel pipe to a remote one), plus what choosing and dialing the endpoint needs. It is also
 * the sink of its local dials.
 */
class Conn extends Pump implements LocalSink {
  ep: LbEndpoint | null = null;
  readonly tried = new Set<string>();
  /** A tunnel dial's deadline, or the wait for first bytes before one. */
  dialTimer: ReturnType<typeof setTimeout> | null = null;
  /** The local dial in flight, and to which endpoint. */
  dialing: LocalDial | null = null;
  dialEp: LbEndpoint | null = null;
  /** Number of the tunnel dial in flight; a timed-out attempt's late callbacks carry an older number and are ignored. */
  attempt = 0;
  /** Bytes read before the endpoint was chosen or connected; replayed to the upstream first. */
  early: Uint8Array | null = null;
  /** A remote dial waiting for the client's first bytes (FIRST_BYTES_WAIT_MS); called when they come. */
  awaitFirst: (() => void) | null = null;
  sniffing = false;
  /** Last bytes moved either way or drained (Date.now()): tcpIdleTimeout counts from here (net/idle.ts). */
  lastActive = Date.now();
  /** The SOCKS5 route's deadline for its request. */
  sniffTimer: ReturnType<typeof setTimeout> | null = null;
  /** When sniffing for a hash key began (Date.now()); the port's sniff sweep ends it after sniffTimeoutMs. */
  sniffSince = 0;
  hashKey: string | undefined = undefined;
  /** The target a route hook chose (one attempt, no balancer). */
  fixedTarget: LbEndpoint | null = null;
  /** A generated cookie still to announce in the first response head (http.ts). */
  cookie: CookieAnnouncer | null = null;
  /** The client is paused (early bytes past EARLY_LIMIT, route decided): joined() resumes it. */
  clientPaused = false;
  /** The splice worker's id for this pair once handed over; 0 = still carried in JavaScript here. */
  spliceId = 0;

  constructor(
    readonly port: TcpServicePort,
    readonly client: Socket<Conn>,
    /** Bytes forwarded so far, both ways (counts towards the bulk hand-over; -1 = never hand over). */
    public moved: number,
  ) {
    super();
    this.end0 = client;
  }

  /** A Bun socket to a local endpoint, or a tunnel pipe to a remote one; null while connecting. */
  get upstream(): Pipe | null {
    return this.end1;
  }

  protected override onClose(): void {
    this.port.released(this);
  }

  localOpened(u: LocalSocket): boolean {
    return this.port.localOpened(this, u);
  }

  localFailed(why: string): void {
    this.dialing = null;
    if (!this.closed && !this.end1) this.port.failedDial(this, this.dialEp!, why);
  }

  localData(chunk: Uint8Array): void {
    this.port.forward(this, 'upstream', chunk);
  }

  localDrain(): void {
    this.port.drained(this, 'upstream');
  }

  localEnd(): void {
    this.port.ended(this, 'upstream');
  }

  localClose(reset: boolean): void {
    this.port.close(this, reset);
  }

  localTimeout(u: LocalSocket): void {
    this.port.idleCheck(this, u);
  }
}

/** The state handed-over client sockets point at: closed, so their last callbacks (Bun still calls close) do nothing. */
const DETACHED = { closed: true, sniffing: false, lastActive: 0 } as unknown as Conn;

function pauseClient(c: Conn): void {
  if (c.clientPaused) return;
  c.clientPaused = true;
  c.client.pause();
}

export class TcpServicePort {
  private listener: TCPSocketListener<Conn> | null = null;
  private readonly conns = new Set<Conn>();
  readonly stats: TcpPortStats = { accepted: 0, active: 0, dialFailures: 0, noEndpoint: 0, remoteDials: 0, bytesUp: 0, bytesDown: 0, spliced: 0 };
  private readonly bulkBytes: number;
  private readonly local: LocalDialer;
  /**
   * Connections waiting for a request head (hash policies), and one sweep that ends those waits after
   * sniffTimeoutMs while any are waiting, instead of a timer per connection (armed, then cleared within a
   * millisecond, as the head nearly always comes in the first read: ~2% of a new connection's CPU). The sweep
   * runs every tenth of sniffTimeoutMs (10-100 ms), so a wait ends up to that much later than its timeout.
   * (Connect deadlines are dial/local.ts's sweep.)
   */
  private readonly sniffers = new Set<Conn>();
  private sweep: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly o: TcpPortOptions) {
    this.bulkBytes = o.bulkBytes ?? 1024 * 1024;
    this.local = new LocalDialer({ timeoutMs: o.connectTimeoutMs });
  }

  get port(): number {
    return this.listener?.port ?? this.o.port;
  }

  start(): void {
    const self = this;
    this.listener = Bun.listen<Conn>({
      hostname: this.o.host,
      port: this.o.port,
      allowHalfOpen: true,
      socket: {
        // Plain Uint8Array views: the splice never needs Buffer methods, and Bun can skip creating them.
        binaryType: 'uint8array',
        open(s) {
          const c = new Conn(self, s, self.o.splicer ? 0 : -1);
          s.data = c;
          self.conns.add(c);
          self.stats.accepted++;
          self.stats.active++;
          if (self.o.idleTimeoutSec > 0) s.timeout(self.o.idleTimeoutSec);
          if (self.o.route) {
            c.sniffing = true;
            c.sniffTimer = setTimeout(() => self.close(c, false), self.o.route.timeoutMs);
            return;
          }
          const pol = self.o.balancer.effectivePolicy();
          if (pol.kind === 'consistent-hash' && pol.hash.kind !== 'source-ip') {
            c.sniffing = true;
            c.sniffSince = c.lastActive;
            self.sniffers.add(c);
            self.armSweep();
            return;
          }
          self.dial(c);
        },
        data(s, chunk) {
          const c = s.data;
          if (c.sniffing) {
            c.early = concat(c.early, chunk);
            if (self.o.route) self.routeDecide(c);
            else if (!looksLikeHttp(c.early) || headEnd(c.early) >= 0 || c.early.length >= MAX_HEAD) self.endSniff(c);
            return;
          }
          self.forward(c, 'client', chunk);
        },
        drain(s) {
          self.drained(s.data, 'client');
        },
        end(s) {
          self.ended(s.data, 'client');
        },
        timeout(s) {
          self.idleCheck(s.data, s);
        },
        error(s) {
          self.close(s.data, true);
        },
        close(s, err) {
          // Bun reports a reset (ECONNRESET) here, with the error, rather than through error().
          self.close(s.data, !!err);
        },
      },
    });
  }

  /** Stop accepting; established connections are closed too (the module stops them on shutdown). */
  stop(): void {
    this.listener?.stop(true);
    this.listener = null;
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = null;
    this.local.stop();
    for (const c of [...this.conns]) {
      if (c.spliceId) this.o.splicer?.close(c.spliceId, false);
      else this.close(c, false);
    }
  }

  private routeDecide(c: Conn): void {
    const r = this.o.route!.decide(c.client as Socket<unknown>, c.early!);
    if (r === 'more') {
      if (c.early!.length > MAX_HEAD) this.close(c, false);
      return;
    }
    c.sniffing = false;
    if (c.sniffTimer) clearTimeout(c.sniffTimer);
    if (r === null) {
      this.close(c, false);
      return;
    }
    pauseClient(c);
    c.fixedTarget = r.target;
    c.early = r.rest.length ? r.rest : null;
    this.dial(c);
  }

  /** Arms the sniff sweep while connections wait for a request head; it stops itself when none do. */
  private armSweep(): void {
    if (this.sweep) return;
    const sniffMs = this.o.sniffTimeoutMs ?? 500;
    this.sweep = setInterval(() => {
      const now = Date.now();
      for (const c of this.sniffers) if (now - c.sniffSince >= sniffMs) this.endSniff(c);
      if (this.sniffers.size === 0 && this.sweep) {
        clearInterval(this.sweep);
        this.sweep = null;
      }
    }, Math.max(10, Math.min(100, sniffMs / 10)));
  }

  /**
   * The request head is in (or will not come): choose by its key and dial. The client is not paused: bytes that
   * come while the upstream connects are kept as early bytes (forward()), up to EARLY_LIMIT, as on every dial.
   */
  private endSniff(c: Conn): void {
    if (!c.sniffing || c.closed) return;
    c.sniffing = false;
    this.sniffers.delete(c);
    const pol = this.o.balancer.effectivePolicy();
    if (pol.kind === 'consistent-hash' && pol.hash.kind !== 'source-ip') {
      const d = decideFromHead(c.early, pol.hash);
      c.hashKey = d.hashKey;
      c.cookie = d.cookie;
    }
    this.dial(c);
  }

  private dial(c: Conn): void {
    if (c.closed) return;
    const ep = c.fixedTarget
      ? (c.tried.size === 0 ? c.fixedTarget : null)
      : c.tried.size < this.o.maxAttempts ? this.o.balancer.pick({ clientIP: this.o.balancer.usesClientIP() ? c.client.remoteAddress : '', hashKey: c.hashKey, exclude: c.tried }) : null;
    if (!ep) {
      if (c.fixedTarget) this.o.route?.failed?.(c.client as Socket<unknown>);
      if (c.tried.size === 0) this.stats.noEndpoint++;
      this.o.logger.debug('no endpoint could be connected; closing the client', { tried: [...c.tried].join(',') });
      this.close(c, false);
      return;
    }
    c.tried.add(ep.key);
    if (!this.o.isLocal(ep)) {
      if (!c.early && !c.fin0 && this.o.remote?.takesEarly) this.awaitFirstBytes(c, ep);
      else this.dialRemote(c, ep);
      return;
    }
    c.dialEp = ep;
    c.dialing = this.local.dial(ep.ip, ep.port, c);
  }

  /** @internal A local dial of `c` connected: pair it, unless the connection has gone meanwhile. */
  localOpened(c: Conn, u: LocalSocket): boolean {
    c.dialing = null;
    if (c.closed || c.end1) return false;
    if (this.o.idleTimeoutSec > 0) u.timeout(this.o.idleTimeoutSec);
    this.joined(c, c.dialEp!, u);
    return true;
  }

  /** Open the tunnel to `ep` once the client's first bytes are here, or after FIRST_BYTES_WAIT_MS without them. */
  private awaitFirstBytes(c: Conn, ep: LbEndpoint): void {
    const go = (): void => {
      if (c.awaitFirst !== go) return;
      c.awaitFirst = null;
      clearTimeout(c.dialTimer!);
      if (!c.closed) this.dialRemote(c, ep);
    };
    c.awaitFirst = go;
    c.dialTimer = setTimeout(go, FIRST_BYTES_WAIT_MS);
  }

  /** An endpoint on another node: a tunnel stream, driven like a socket. */
  private dialRemote(c: Conn, ep: LbEndpoint): void {
    const remote = this.o.remote;
    if (!remote) {
      this.failedDial(c, ep, 'endpoint is on another node and the tunnel is not enabled (modules.edgeTunnel.enable)');
      return;
    }
    const attempt = ++c.attempt;
    const abort = new AbortController();
    c.dialTimer = setTimeout(() => {
      if (c.attempt !== attempt || c.upstream) return;
      c.attempt++;
      abort.abort(new Error(`tunnel dial timeout after ${this.o.connectTimeoutMs} ms`));
      this.failedDial(c, ep, `tunnel dial timeout after ${this.o.connectTimeoutMs} ms`);
    }, this.o.connectTimeoutMs);
    this.stats.remoteDials++;
    let pipe: Pipe | null = null;
    const live = (): boolean => pipe !== null && c.upstream === pipe;
    // A pipe can close between its SUCCESS and our pairing with it (a reset in the same read as the reply):
    // remembered here and acted on once paired, or the client would wait for an upstream that is gone.
    let closedEarly: boolean | null = null;
    const handlers: PipeHandlers = {
      data: (d) => live() && this.forward(c, 'upstream', d),
      drain: () => live() && this.drained(c, 'upstream'),
      end: () => live() && this.ended(c, 'upstream'),
      close: (reset) => {
        if (live()) this.close(c, reset);
        else closedEarly ??= reset;
      },
    };
    remote.open({ nodeName: ep.nodeName, protocol: 'tcp', ip: ep.ip, port: ep.port }, handlers, abort.signal, c.early ?? undefined).then(
      (p) => {
        if (attempt !== c.attempt || c.closed || c.upstream) {
          p.terminate();
          return;
        }
        clearTimeout(c.dialTimer!);
        pipe = p;
        c.moved = -1; // a tunnel stream has no fd to splice
        this.joined(c, ep, p, p.sentEarly ?? 0);
        p.resume();
        if (closedEarly !== null) this.close(c, closedEarly);
      },
      (err: Error) => {
        if (attempt !== c.attempt || c.upstream || c.closed) return;
        clearTimeout(c.dialTimer!);
        this.failedDial(c, ep, err.message);
      },
    );
  }

  /** The upstream is connected: pair it with the client and let the early bytes through (`sent` of them already went with the CONNECT). */
  private joined(c: Conn, ep: LbEndpoint, u: Pipe, sent = 0): void {
    c.end1 = u;
    c.ep = ep;
    this.o.balancer.acquire(ep.key);
    if (c.fixedTarget) this.o.route?.connected?.(c.client as Socket<unknown>);
    this.stats.bytesUp += sent;
    const early = c.early && sent ? (c.early.length > sent ? c.early.subarray(sent) : null) : c.early;
    c.early = null;
    if (early) {
      this.stats.bytesUp += early.length;
      const n = u.write(early);
      if (n < early.length) {
        c.held1 = early.subarray(Math.max(0, n)); // drained() resumes the client
        return;
      }
    }
    if (c.fin0) u.shutdown();
    else if (c.clientPaused) {
      c.clientPaused = false;
      c.client.resume();
    }
  }

  /** @internal */
  failedDial(c: Conn, ep: LbEndpoint, why: string): void {
    this.stats.dialFailures++;
    this.o.logger.debug('dial failed; trying another endpoint', { endpoint: ep.key, error: why });
    this.dial(c);
  }

  /** @internal Bytes from `from` go to the other side (through the pump, which pauses `from` on a partial write). */
  forward(c: Conn, from: Side, chunk: Uint8Array): void {
    if (c.closed) return;
    c.lastActive = Date.now();
    if (from === 'client') {
      if (!c.end1) {
        // The upstream is still connecting: keep the bytes (replayed on open), up to EARLY_LIMIT.
        c.early = concat(c.early, chunk);
        if (c.early.length >= EARLY_LIMIT) pauseClient(c);
        c.awaitFirst?.();
        return;
      }
      this.stats.bytesUp += chunk.length;
    } else {
      if (c.cookie) {
        const out = c.cookie.take(chunk);
        if (!out) return;
        c.cookie = null;
        chunk = out;
      }
      this.stats.bytesDown += chunk.length;
    }
    if (c.data(from === 'client' ? 0 : 1, chunk) && c.moved >= 0 && (c.moved += chunk.length) >= this.bulkBytes) this.handOver(c);
  }

  /** A bulk connection with nothing held here goes to the splice worker (see splicer.ts). */
  private handOver(c: Conn): void {
    if (!c.flowing || c.clientPaused || c.cookie || c.early || !c.upstream) return;
    const u = c.upstream as LocalSocket;
    const owner = u.data;
    c.client.data = DETACHED;
    detach(u);
    const id = this.o.splicer!.handOver(c.client as Socket<unknown>, u as Socket<unknown>, (d) => {
      this.stats.bytesUp += d.up;
      this.stats.bytesDown += d.down;
      this.stats.active--;
      this.conns.delete(c);
      if (c.ep) this.o.balancer.release(c.ep.key);
    });
    if (!id) {
      // Not now (the worker is full, busy or gone): stay here, and ask again after another bulkBytes.
      c.client.data = c;
      u.data = owner;
      c.moved = 0;
      return;
    }
    c.spliceId = id;
    c.closed = true; // carried by the worker now: nothing here may touch the sockets
    if (c.dialTimer) clearTimeout(c.dialTimer);
    this.stats.spliced++;
  }

  /** @internal `side` can take more: the pump writes what waits for it and resumes the other side. */
  drained(c: Conn, side: Side): void {
    if (c.closed) return;
    c.lastActive = Date.now();
    c.drain(side === 'client' ? 0 : 1);
  }

  /** @internal FIN from `side`: passed on once its pending bytes are out; closes when both directions are done. */
  ended(c: Conn, side: Side): void {
    if (c.closed) return;
    if (side === 'client') {
      if (c.sniffing && this.o.route) {
        this.close(c, false); // the client left before saying where to
        return;
      }
      if (c.sniffing || !c.end1) {
        c.fin0 = true; // joined() passes it on
        if (c.sniffing) this.endSniff(c); // a request followed by FIN: still delivered, then the FIN
        else if (!c.early) this.close(c, false);
        return;
      }
      c.end(0);
    } else {
      const held = c.cookie?.flush();
      c.cookie = null;
      if (held) {
        // The response ended before its head did: pass on what there is.
        this.stats.bytesDown += held.length;
        c.data(1, held);
      }
      c.end(1);
    }
  }

  /** @internal Bun's deadline fired on one of `c`'s sockets: close if it really was idle (net/idle.ts). */
  idleCheck(c: Conn, s: { timeout(sec: number): void }): void {
    if (idleFor(s, c.lastActive, this.o.idleTimeoutSec)) this.close(c, false);
  }

  /** @internal Close both sides: with `reset`, the survivor gets an RST (error propagation), else a FIN. */
  close(c: Conn, reset: boolean): void {
    if (!c.closed) c.close(reset); // the pump ends both sockets, then released()
  }

  /** @internal The pump closed `c`: free what it held here. */
  released(c: Conn): void {
    if (c.dialTimer) clearTimeout(c.dialTimer);
    if (c.sniffTimer) clearTimeout(c.sniffTimer);
    this.sniffers.delete(c);
    this.local.cancel(c.dialing);
    c.dialing = null;
    this.conns.delete(c);
    this.stats.active--;
    if (c.ep) this.o.balancer.release(c.ep.key);
  }
}
