/**
 * proxy/ — the TCP data path of one service port: accept, choose an endpoint, dial, splice.
 *
 * - While the upstream connects, the client's first bytes are kept (a request head, usually) and replayed on open;
 *   past EARLY_LIMIT the client is paused and the rest waits in the kernel. Not pausing by default saves the
 *   four epoll_ctl calls a pause/resume pair costs per connection. The pair is joined in the upstream's `open`.
 * - A failed dial (refused, timeout) excludes that endpoint and asks the balancer again, at most `maxAttempts`
 *   times; then the client is closed cleanly (FIN).
 * - Backpressure: a partial write keeps the rest (one chunk, a view: no copy) and pauses the reading side until
 *   `drain`; memory per connection is bounded by one read chunk each way.
 * - Half-close: a FIN from one side is passed on with shutdown() once pending bytes are written; the pair closes
 *   when both directions are done. An error (RST) on one side resets the other.
 * - TCP_NODELAY on both sides (Bun sets it on accepted and connected sockets itself); optional idle timeout
 *   (idle: no bytes either way; Bun's socket deadline alone would close busy connections too, net/idle.ts).
 * - Only when a hashing policy needs it (header, cookie or query), the first request head is read before the
 *   endpoint is chosen (bounded by MAX_HEAD and sniffTimeoutMs), kept as raw bytes and replayed: keep-alive,
 *   pipelining and bodies pass untouched; routing is per connection. A generated cookie is announced with a
 *   Set-Cookie line inserted into the first response head.
 * - Bulk: a connection that has moved `bulkBytes` with nothing buffered is handed to the splice worker
 *   (splicer.ts: splice(2) off the main thread, no copies into JavaScript); its slot is freed when the worker
 *   reports it closed.
 */
import type { Socket, TCPSocketListener } from 'bun';
import { randomBytes } from 'node:crypto';
import type { Balancer, LbEndpoint } from '../lb/balancer.ts';
import { concat } from '../net/bytes.ts';
import { idleFor } from '../net/idle.ts';
import type { Logger } from '../obs/logger.ts';
import type { Pipe, PipeHandlers } from '../tunnel/pipe.ts';
import { MAX_HEAD, headEnd, insertIntoHead, latin1, looksLikeHttp, requestKey, setCookieLine } from './http.ts';
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

export interface TcpPortOptions {
  host: string;
  /** 0 = kernel-assigned (the original's model). */
  port: number;
  balancer: Balancer;
  logger: Logger;
  /** Whether an endpoint can be dialed from here; false sends the dial to `remote` (the tunnel). */
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

export interface TcpRemoteDialer {
  /** `early`: the client's first bytes, which the tunnel may send with its CONNECT; `sentEarly` says how many it did. */
  open(t: { nodeName: string; protocol: 'tcp'; ip: string; port: number }, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<Pipe & { readonly sentEarly?: number }>;
  /** Worth waiting a moment for the client's first bytes before opening (they can ride with the CONNECT). */
  readonly takesEarly?: boolean;
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

/** What an upstream socket carries: its connection and which dial attempt created it. */
interface Dial {
  c: Conn;
  ep: LbEndpoint;
  attempt: number;
}

interface Conn {
  client: Socket<Conn>;
  /** A Bun socket to a local endpoint, or a tunnel stream to a remote one. */
  upstream: Pipe | null;
  ep: LbEndpoint | null;
  tried: Set<string>;
  /** Bytes accepted from one side that the other side's socket has not taken yet. */
  pendingToUpstream: Uint8Array | null;
  pendingToClient: Uint8Array | null;
  /** FIN received from this side (to pass on once its pending bytes are out). */
  clientEnded: boolean;
  upstreamEnded: boolean;
  closed: boolean;
  /** A tunnel dial's deadline, or the wait for first bytes before one. */
  dialTimer: ReturnType<typeof setTimeout> | null;
  /** A local dial in flight: since when (Date.now()), and to which endpoint; the port's sweep times it out. */
  dialSince: number;
  dialEp: LbEndpoint | null;
  /** Number of the dial in flight; a timed-out attempt's late callbacks carry an older number and are ignored. */
  attempt: number;
  /** Bytes read before the endpoint was chosen (HTTP hashing); replayed to the upstream first. */
  early: Uint8Array | null;
  /** A remote dial waiting for the client's first bytes (FIRST_BYTES_WAIT_MS); called when they come. */
  awaitFirst: (() => void) | null;
  sniffing: boolean;
  /** Last bytes moved either way or drained (Date.now()): tcpIdleTimeout counts from here (net/idle.ts). */
  lastActive: number;
  /** The SOCKS5 route's deadline for its request. */
  sniffTimer: ReturnType<typeof setTimeout> | null;
  /** When sniffing for a hash key began (Date.now()); the port's sniff sweep ends it after sniffTimeoutMs. */
  sniffSince: number;
  hashKey: string | undefined;
  /** The target a route hook chose (one attempt, no balancer). */
  fixedTarget: LbEndpoint | null;
  /** A Set-Cookie line still to insert into the first response head, and the response bytes held for it. */
  setCookie: string | null;
  respHead: Uint8Array | null;
  /** The client is paused (early bytes past EARLY_LIMIT, route decided): joined() resumes it. */
  clientPaused: boolean;
  /** Bytes forwarded so far, both ways (counts towards the bulk hand-over; -1 = never hand over). */
  moved: number;
  /** The splice worker's id for this pair once handed over; 0 = still carried in JavaScript here. */
  spliceId: number;
}

/** The state handed-over sockets point at: closed, so their last callbacks (Bun still calls close) do nothing. */
const DETACHED = { closed: true, upstream: null, sniffing: false, lastActive: 0 } as unknown as Conn;

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
  /**
   * Connections waiting for a request head (hash policies) or for a local upstream to connect, and one sweep
   * that ends those waits after sniffTimeoutMs / connectTimeoutMs while any are waiting. A timer per connection
   * (armed, then cleared within a millisecond, as the head nearly always comes in the first read and a local
   * connect takes microseconds) cost ~2% of a new connection's CPU each. The sweep runs every tenth of the
   * shorter timeout (10-100 ms), so a wait ends up to that much later than its timeout.
   */
  private readonly sniffers = new Set<Conn>();
  private readonly dialing = new Set<Conn>();
  private sweep: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly o: TcpPortOptions) {
    this.bulkBytes = o.bulkBytes ?? 1024 * 1024;
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
          const c: Conn = {
            client: s, upstream: null, ep: null, tried: new Set(), pendingToUpstream: null, pendingToClient: null, clientEnded: false,
            upstreamEnded: false, closed: false, lastActive: Date.now(), dialTimer: null, dialSince: 0, dialEp: null, attempt: 0, early: null, awaitFirst: null, sniffing: false, sniffTimer: null, sniffSince: 0, hashKey: undefined, fixedTarget: null, setCookie: null, respHead: null, clientPaused: false,
            moved: self.o.splicer ? 0 : -1, spliceId: 0,
          };
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
          if (idleFor(s, s.data.lastActive, self.o.idleTimeoutSec)) self.close(s.data, false);
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

  /** Arms the sweep while connections wait (for a request head, for a connect); it stops itself when none do. */
  private armSweep(): void {
    if (this.sweep) return;
    const sniffMs = this.o.sniffTimeoutMs ?? 500;
    const connectMs = this.o.connectTimeoutMs;
    this.sweep = setInterval(() => {
      const now = Date.now();
      for (const c of this.sniffers) if (now - c.sniffSince >= sniffMs) this.endSniff(c);
      for (const c of this.dialing) {
        if (now - c.dialSince < connectMs) continue;
        this.dialing.delete(c);
        c.attempt++; // a late open or connectError of this attempt is ignored
        this.failedDial(c, c.dialEp!, `connect timeout after ${connectMs} ms`); // may dial again: back in the set
      }
      if (this.sniffers.size === 0 && this.dialing.size === 0 && this.sweep) {
        clearInterval(this.sweep);
        this.sweep = null;
      }
    }, Math.max(10, Math.min(100, Math.min(sniffMs, connectMs) / 10)));
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
      const end = c.early ? headEnd(c.early) : -1;
      if (end >= 0) c.hashKey = requestKey(latin1(c.early!, end), pol.hash);
      if (end >= 0 && c.hashKey === undefined && pol.hash.kind === 'cookie') {
        c.hashKey = randomBytes(16).toString('hex');
        c.setCookie = setCookieLine(pol.hash, c.hashKey);
      }
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
      if (!c.early && !c.clientEnded && this.o.remote?.takesEarly) this.awaitFirstBytes(c, ep);
      else this.dialRemote(c, ep);
      return;
    }
    const attempt = ++c.attempt;
    c.dialSince = Date.now();
    c.dialEp = ep;
    this.dialing.add(c);
    this.armSweep();
    Bun.connect<Dial>({ hostname: ep.ip, port: ep.port, allowHalfOpen: true, data: { c, ep, attempt }, socket: this.upstreamHandlers as unknown as Bun.SocketHandler<Dial> }).catch(() => {}); // typings only allow "buffer" here
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
    c.upstream = u;
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
        c.pendingToUpstream = early.subarray(Math.max(0, n)); // drained() resumes the client
        return;
      }
    }
    if (c.clientEnded) u.shutdown();
    else if (c.clientPaused) {
      c.clientPaused = false;
      c.client.resume();
    }
  }

  /**
   * One handler object for every upstream socket (state lives in socket.data): building a fresh set of closures
   * per connection is measurable at tens of thousands of new connections per second.
   */
  private readonly upstreamHandlers: Bun.SocketHandler<Dial, 'uint8array'> = {
    binaryType: 'uint8array',
    open: (u) => {
      const { c, ep, attempt } = u.data;
      if (attempt !== c.attempt || c.closed || c.upstream) {
        u.terminate();
        return;
      }
      this.dialing.delete(c);
      if (this.o.idleTimeoutSec > 0) u.timeout(this.o.idleTimeoutSec);
      this.joined(c, ep, u);
    },
    data: (u, chunk) => this.forward(u.data.c, 'upstream', chunk),
    drain: (u) => this.drained(u.data.c, 'upstream'),
    end: (u) => this.ended(u.data.c, 'upstream'),
    timeout: (u) => {
      if (idleFor(u, u.data.c.lastActive, this.o.idleTimeoutSec)) this.close(u.data.c, false);
    },
    error: (u) => {
      if (u.data.c.upstream === u) this.close(u.data.c, true);
    },
    close: (u, err) => {
      if (u.data.c.upstream === u) this.close(u.data.c, !!err);
    },
    connectError: (u, err) => {
      const { c, ep, attempt } = u.data;
      if (attempt !== c.attempt || c.upstream || c.closed) return;
      this.dialing.delete(c);
      this.failedDial(c, ep, err.message);
    },
  };

  private failedDial(c: Conn, ep: LbEndpoint, why: string): void {
    this.stats.dialFailures++;
    this.o.logger.debug('dial failed; trying another endpoint', { endpoint: ep.key, error: why });
    this.dial(c);
  }

  /** Bytes from `from` go to the other side; a partial write pauses `from` until the other side drains. */
  private forward(c: Conn, from: Side, chunk: Uint8Array): void {
    if (c.closed) return;
    c.lastActive = Date.now();
    const to = from === 'client' ? c.upstream : c.client;
    if (!to) {
      // The upstream is still connecting: keep the bytes (replayed on open), up to EARLY_LIMIT.
      c.early = concat(c.early, chunk);
      if (c.early.length >= EARLY_LIMIT) pauseClient(c);
      c.awaitFirst?.();
      return;
    }
    if (from === 'upstream' && c.setCookie) {
      // Hold the first response until its head is complete, then announce the generated cookie in it.
      c.respHead = concat(c.respHead, chunk);
      const end = headEnd(c.respHead);
      if (end < 0 && c.respHead.length < 64 * 1024) return;
      chunk = end >= 0 ? insertIntoHead(c.respHead, end, c.setCookie) : c.respHead;
      c.setCookie = null;
      c.respHead = null;
    }
    if (from === 'client') this.stats.bytesUp += chunk.length;
    else this.stats.bytesDown += chunk.length;
    const held = from === 'client' ? c.pendingToUpstream : c.pendingToClient;
    if (held) {
      // A tunnel stream may deliver what it had already queued after pause(): keep order, write after the rest.
      if (from === 'client') c.pendingToUpstream = concat(held, chunk);
      else c.pendingToClient = concat(held, chunk);
      return;
    }
    const n = to.write(chunk);
    if (n < chunk.length) {
      const rest = chunk.subarray(Math.max(0, n));
      if (from === 'client') c.pendingToUpstream = rest;
      else c.pendingToClient = rest;
      (from === 'client' ? c.client : c.upstream!).pause();
      return;
    }
    if (c.moved >= 0 && (c.moved += chunk.length) >= this.bulkBytes) this.handOver(c);
  }

  /** A bulk connection with nothing held here goes to the splice worker (see splicer.ts). */
  private handOver(c: Conn): void {
    if (c.pendingToClient || c.pendingToUpstream || c.clientEnded || c.upstreamEnded || c.clientPaused || c.setCookie || c.respHead || c.early || !c.upstream) return;
    const u = c.upstream as Socket<Dial>;
    const dial = u.data;
    c.client.data = DETACHED;
    u.data = { c: DETACHED, ep: dial.ep, attempt: -1 };
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
      u.data = dial;
      c.moved = 0;
      return;
    }
    c.spliceId = id;
    c.closed = true;
    if (c.dialTimer) clearTimeout(c.dialTimer);
    this.stats.spliced++;
  }

  /** `side` can take more: write what waits for it and resume the other side. */
  private drained(c: Conn, side: Side): void {
    if (c.closed) return;
    c.lastActive = Date.now();
    const sock = side === 'client' ? c.client : c.upstream;
    const pending = side === 'client' ? c.pendingToClient : c.pendingToUpstream;
    if (!sock || !pending) return;
    const n = sock.write(pending);
    if (n < pending.length) {
      if (side === 'client') c.pendingToClient = pending.subarray(Math.max(0, n));
      else c.pendingToUpstream = pending.subarray(Math.max(0, n));
      return;
    }
    if (side === 'client') {
      c.pendingToClient = null;
      if (c.upstreamEnded) c.client.shutdown();
      else c.upstream?.resume();
    } else {
      c.pendingToUpstream = null;
      if (c.clientEnded) c.upstream?.shutdown();
      else c.client.resume();
    }
    this.finishIfDone(c);
  }

  private finishIfDone(c: Conn): void {
    if (c.clientEnded && c.upstreamEnded && !c.pendingToClient && !c.pendingToUpstream) this.close(c, false);
  }

  /** FIN from `side`: pass it on once its pending bytes are out; close when both directions are done. */
  private ended(c: Conn, side: Side): void {
    if (c.closed) return;
    if (side === 'client') {
      c.clientEnded = true;
      if (c.sniffing && this.o.route) {
        this.close(c, false); // the client left before saying where to
        return;
      }
      if (c.sniffing) {
        this.endSniff(c); // a request followed by FIN: still delivered, then the FIN
        return;
      }
      if (!c.upstream) {
        if (!c.early) this.close(c, false);
        return;
      }
      if (!c.pendingToUpstream) c.upstream.shutdown();
    } else {
      c.upstreamEnded = true;
      if (c.respHead) {
        // The response ended before its head did: pass on what there is.
        const held = c.respHead;
        c.respHead = c.setCookie = null;
        this.forward(c, 'upstream', held);
      }
      if (!c.pendingToClient) c.client.shutdown();
    }
    this.finishIfDone(c);
  }

  /** Close both sides: with `reset`, the survivor gets an RST (error propagation), else a FIN. */
  private close(c: Conn, reset: boolean): void {
    if (c.closed) return;
    c.closed = true;
    if (c.dialTimer) clearTimeout(c.dialTimer);
    if (c.sniffTimer) clearTimeout(c.sniffTimer);
    this.sniffers.delete(c);
    this.dialing.delete(c);
    this.conns.delete(c);
    this.stats.active--;
    if (c.ep) this.o.balancer.release(c.ep.key);
    for (const s of [c.client, c.upstream]) {
      if (!s) continue;
      if (reset) s.terminate();
      else s.end();
    }
  }
}
