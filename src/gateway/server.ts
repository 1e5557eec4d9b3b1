/**
 * gateway/ — the HTTP/1.1 listener (sockets accepted by listen.ts): one exchange at a time per client connection, routed
 * request by request, bytes forwarded as they come with backpressure both ways.
 *
 * Why not Bun.serve: with an async handler (every proxied request is one) Bun 1.4.4 and 1.4.5 answer pipelined
 * requests with nothing (uWS closes the connection when a second request arrives while the first response is
 * pending). Parsing ourselves also lets bodies and chunked encodings pass through untouched, WebSocket upgrades
 * become a plain byte splice, and every deadline is ours.
 *
 * One exchange: the request head is parsed (http1.ts, strict) and routed (the GatewayRouter); the head is
 * rewritten for the backend and the body follows as it arrives; the response head is parsed to learn its
 * framing and rewritten for the client (hop-by-hop headers dropped), and the body passes through unchanged.
 * Pipelined requests wait in the buffer until the response ahead of them is done (bounded: reading pauses).
 * A request without a body whose backend fails before answering is retried on another endpoint (and a pooled
 * connection that the backend had closed, on a fresh one); with a body it is not, as its bytes are gone.
 *
 * Deadlines (a sweep each second): a request head must be complete within headTimeoutMs of its first byte
 * (slowloris), a connection with nothing in flight closes after idleTimeoutMs, a request body that makes no
 * progress for bodyTimeoutMs is cut off. A waiting connection costs its socket and a small object.
 */
import { describeError } from '../errors.ts';
import type { LbEndpoint } from '../lb/balancer.ts';
import { ChunkScanner, type Framing, HttpError, MAX_HEAD_BYTES, type RequestHead, type ResponseHead, findHeadEnd, parseRequestHead, parseResponseHead, responseFraming } from './http1.ts';
import type { HttpMatch, HttpRoute } from './routes.ts';
import { rewriteTarget } from './routes.ts';
import type { UpstreamConn, UpstreamOwner } from './upstream.ts';
import type { ClientSock } from './sock.ts';
import { ConnListener, type ListenedConn } from './listen.ts';
import type { PortCertificates } from './tls.ts';

const EMPTY = new Uint8Array(0);
const HOST = /^(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;
const enc = new TextEncoder();
/** Request headers that belong to one hop (RFC 9110 §7.6.1): never forwarded. Host is rewritten separately. */
const HOP_REQUEST = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'host', 'x-forwarded-proto', 'x-forwarded-for', 'x-request-id']);
const FRAMING = new Set(['content-length', 'transfer-encoding', 'host']);
const HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']);
const REASONS: Record<number, string> = { 400: 'Bad Request', 404: 'Not Found', 408: 'Request Timeout', 413: 'Content Too Large', 431: 'Request Header Fields Too Large', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout', 505: 'HTTP Version Not Supported' };

/** A routed request: where it goes. */
export interface Plan {
  route: HttpRoute;
  match: HttpMatch | null;
  /** Names the backend in errors and in the balancer. */
  backendKey: string;
}

/** What the listener asks of the gateway module. */
export interface GatewayRouter {
  decide(head: RequestHead, host: string, port: number): Plan | { status: number; reason: string };
  pick(plan: Plan, clientIP: string, tried: ReadonlySet<string>): LbEndpoint | null;
  acquire(plan: Plan, ep: LbEndpoint): void;
  release(plan: Plan, ep: LbEndpoint): void;
  /** An idle pooled connection to `ep`, or null. */
  pooled(ep: LbEndpoint): UpstreamConn | null;
  open(ep: LbEndpoint): Promise<UpstreamConn>;
  /** The exchange on `c` is over. */
  done(c: UpstreamConn, reusable: boolean): void;
  /** One exchange's outcome; `traffic`: the backend it went to and the bytes each way (head and body). */
  record(routeId: string, status: number, seconds: number, error?: string, line?: () => string, traffic?: { backend: string; up: number; down: number }): void;
}

export interface ListenerSettings {
  headTimeoutMs: number;
  idleTimeoutMs: number;
  bodyTimeoutMs: number;
  maxBodyBytes: number;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (!a.length) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export class Client implements UpstreamOwner, ListenedConn {
  sock: ClientSock | null = null;
  in: Uint8Array = EMPTY;
  reqPhase: 'head' | 'connect' | 'body' | 'done' = 'head';
  resPhase: 'none' | 'head' | 'body' = 'none';
  head: RequestHead | null = null;
  plan: Plan | null = null;
  ep: LbEndpoint | null = null;
  up: UpstreamConn | null = null;
  pooledUp = false;
  tried = new Set<string>();
  lastError = '';
  upHead: Uint8Array = EMPTY;
  reqLeft = 0;
  reqScan: ChunkScanner | null = null;
  bodySent = false;
  upPending: Uint8Array | null = null;
  outPending: Uint8Array | null = null;
  resBuf: Uint8Array = EMPTY;
  resHead: ResponseHead | null = null;
  resFraming: Framing = { kind: 'none' };
  resLeft = 0;
  resScan: ChunkScanner | null = null;
  willClose = false;
  tunnel = false;
  clientEnded = false;
  closed = false;
  readPaused = false;
  headStart = 0;
  lastActive = Date.now();
  t0 = 0;
  timer: ReturnType<typeof setTimeout> | null = null;
  clientIP = '';
  /** Bytes of the current exchange to the backend and to the client. */
  bytesUp = 0;
  bytesDown = 0;

  constructor(readonly l: HttpListener) {}

  // ---- client side (ListenedConn: the listener calls these) ----
  sockOpened(s: ClientSock, remoteAddress: string): void {
    this.sock = s;
    this.clientIP = remoteAddress;
  }

  sockData(chunk: Uint8Array): void {
    this.lastActive = Date.now();
    if (this.tunnel) return this.upWrite(chunk);
    this.in = concat(this.in, chunk);
    if (this.reqPhase === 'head' && this.resPhase === 'none') this.nextRequest();
    else if (this.reqPhase === 'body') this.pumpBody();
    else if (this.in.length > 2 * MAX_HEAD_BYTES) this.pauseRead(); // pipelined bytes wait, bounded
  }

  pauseRead(): void {
    if (this.readPaused) return;
    this.readPaused = true;
    this.sock?.pause();
  }

  resumeRead(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    this.sock?.resume();
  }

  sockDrain(): void {
    const p = this.outPending;
    if (!p || !this.sock) return;
    const n = this.sock.write(p);
    if (n < p.length) {
      this.outPending = p.subarray(n);
      return;
    }
    this.outPending = null;
    if (this.willClose && this.resPhase === 'none' && !this.tunnel) this.sock.end();
    else this.up?.resume();
  }

  sockEnd(): void {
    this.clientEnded = true;
    if (this.tunnel) return this.up?.pipe?.shutdown();
    // Nothing in flight: done. Otherwise the response still goes out, then the connection closes.
    if (this.reqPhase === 'head' && this.resPhase === 'none') this.sock?.end();
  }

  sockClosed(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const up = this.up;
    this.up = null;
    if (up) {
      up.owner = null;
      if (this.plan && this.ep) this.l.router.release(this.plan, this.ep);
      up.pipe?.terminate();
      this.l.router.done(up, false);
    }
  }

  private clientWrite(b: Uint8Array): void {
    if (this.closed || !this.sock || !b.length) return;
    this.bytesDown += b.length;
    if (this.outPending) {
      this.outPending = concat(this.outPending, b);
      return;
    }
    const n = this.sock.write(b);
    if (n < b.length) {
      this.outPending = b.slice(n);
      this.up?.pause(); // the client reads slower than the backend sends
    }
  }

  /** A response made here; `close` when the connection cannot go on (framing unknown, or a body not read). */
  reply(status: number, text: string, close: boolean, routeId = '(none)'): void {
    const body = `${text}\n`;
    const closeIt = close || !this.head?.keepAlive || this.clientEnded;
    this.clientWrite(enc.encode(`HTTP/1.1 ${status} ${REASONS[status] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${closeIt ? 'connection: close\r\n' : ''}\r\n${body}`));
    this.l.router.record(routeId, status, this.t0 ? (performance.now() - this.t0) / 1000 : 0, status >= 500 ? text : undefined);
    this.resetExchange();
    if (closeIt) this.endAfterFlush();
    else this.nextRequest();
  }

  private endAfterFlush(): void {
    this.willClose = true;
    this.reqPhase = 'done';
    if (!this.outPending) this.sock?.end();
  }

  private resetExchange(): void {
    this.bytesUp = this.bytesDown = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.reqPhase = 'head';
    this.resPhase = 'none';
    this.head = this.plan = this.ep = this.resHead = null;
    this.tried.clear();
    this.upPending = null;
    this.resBuf = EMPTY;
    this.reqScan = this.resScan = null;
    this.bodySent = false;
  }

  /** Parses and starts the next request in the buffer, if a whole head is there. */
  nextRequest(): void {
    if (this.closed || this.willClose || this.reqPhase !== 'head' || this.resPhase !== 'none') return;
    if (!this.in.length) {
      if (this.clientEnded) this.sock?.end();
      this.resumeRead();
      return;
    }
    if (!this.headStart) this.headStart = Date.now();
    const end = findHeadEnd(this.in);
    if (end < 0) {
      if (this.in.length > MAX_HEAD_BYTES) return this.reply(431, `request head larger than ${MAX_HEAD_BYTES} bytes`, true);
      return;
    }
    this.t0 = performance.now();
    this.headStart = 0;
    let head: RequestHead;
    try {
      head = parseRequestHead(this.in, end);
    } catch (e) {
      const he = e instanceof HttpError ? e : new HttpError(400, describeError(e));
      return this.reply(he.status, `bad request: ${he.message}`, true);
    }
    this.in = this.in.subarray(end);
    this.head = head;
    const hostHeader = head.headers.find(([k]) => k === 'host')?.[1] ?? '';
    if (!hostHeader && head.minor === 1) return this.reply(400, 'bad request: a Host header is required', true);
    // A name, an IPv4 or a bracketed IPv6 address, and a port: anything else (user info, spaces, a second
    // Host) would let a crafted value match a wildcard host and reach a backend as something else.
    if (hostHeader && (!HOST.test(hostHeader) || head.headers.filter(([k]) => k === 'host').length > 1)) return this.reply(400, 'bad request: a malformed Host header', true);
    const host = hostHeader.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
    const hasBody = head.framing.kind !== 'none' && !(head.framing.kind === 'length' && head.framing.length === 0);
    if (head.framing.kind === 'length' && head.framing.length > this.l.settings.maxBodyBytes) return this.reply(413, `request body over ${this.l.settings.maxBodyBytes} bytes`, true);
    const d = this.l.router.decide(head, host, this.l.port);
    if ('status' in d) return this.reply(d.status, d.reason, hasBody);
    if (d.route.redirect || d.route.direct) return this.answerHere(d, head, hostHeader, hasBody);
    this.plan = d;
    this.reqPhase = 'connect';
    this.upHead = this.buildUpstreamHead(head, hostHeader, d);
    if (d.route.timeoutMs > 0) {
      this.timer = setTimeout(() => this.timeout(d.route.timeoutMs), d.route.timeoutMs);
    }
    this.connect();
  }

  /** A route that answers itself: `redirect` (Location built from the request and the route) or `directResponse`. */
  private answerHere(p: Plan, h: RequestHead, hostHeader: string, hasBody: boolean): void {
    const r = p.route;
    const closeIt = hasBody || !h.keepAlive || this.clientEnded;
    let status: number, extra = '', body: string;
    if (r.redirect) {
      const rd = r.redirect;
      const q = h.target.indexOf('?');
      const path = rd.uri ?? (q < 0 ? h.target : h.target.slice(0, q));
      const query = q < 0 ? '' : h.target.slice(q);
      const hostOnly = (rd.authority ?? hostHeader).replace(/:\d+$/, '');
      const port = rd.port ?? (rd.authority ? undefined : Number(/:(\d+)$/.exec(hostHeader)?.[1] ?? 0) || undefined);
      const location = `${rd.scheme ?? (this.l.tls ? 'https' : 'http')}://${hostOnly}${port ? `:${port}` : ''}${path}${query}`;
      status = rd.code;
      extra = `location: ${location}\r\n`;
      body = '';
    } else {
      status = r.direct!.status;
      body = r.direct!.body;
    }
    const ops = r.responseHeaders;
    const lines: string[] = [];
    if (ops) {
      for (const [k, v] of [...ops.set, ...ops.add]) if (!ops.remove.includes(k)) lines.push(`${k}: ${v}\r\n`);
    }
    this.clientWrite(enc.encode(`HTTP/1.1 ${status} ${REASONS[status] ?? ''}\r\n${extra}${lines.join('')}content-length: ${Buffer.byteLength(body)}\r\n${closeIt ? 'connection: close\r\n' : ''}\r\n${body}`));
    this.l.router.record(r.id, status, (performance.now() - this.t0) / 1000);
    this.resetExchange();
    if (closeIt) this.endAfterFlush();
    else this.nextRequest();
  }

  private buildUpstreamHead(h: RequestHead, hostHeader: string, p: Plan): Uint8Array {
    const lines = [`${h.method} ${rewriteTarget(h.target, p.route, p.match)} HTTP/1.${h.minor}`, `host: ${p.route.rewrite?.authority ?? hostHeader}`];
    let xff = '';
    let rid = '';
    const ops = p.route.requestHeaders;
    for (const [k, v] of h.headers) {
      if (HOP_REQUEST.has(k)) {
        if (k === 'x-forwarded-for') xff = xff ? `${xff}, ${v}` : v;
        else if (k === 'x-request-id') rid = v;
        continue;
      }
      if (ops && !FRAMING.has(k) && (ops.remove.includes(k) || ops.set.some(([n]) => n === k))) continue;
      lines.push(`${k}: ${v}`);
    }
    // The body's framing is the client's, passed through: a route cannot change it (nor Host: rewrite.authority does).
    if (ops) for (const [k, v] of [...ops.set, ...ops.add]) if (!ops.remove.includes(k) && !HOP_REQUEST.has(k) && !FRAMING.has(k)) lines.push(`${k}: ${v}`);
    if (h.upgrade === 'websocket') lines.push('connection: upgrade', 'upgrade: websocket');
    else if (h.minor === 0) lines.push('connection: keep-alive');
    lines.push(`x-forwarded-for: ${xff ? `${xff}, ${this.clientIP}` : this.clientIP}`, `x-forwarded-proto: ${this.l.tls ? 'https' : 'http'}`, `x-request-id: ${rid || crypto.randomUUID()}`);
    return enc.encode(lines.join('\r\n') + '\r\n\r\n');
  }

  private connect(): void {
    const plan = this.plan!;
    const ep = this.l.router.pick(plan, this.clientIP, this.tried);
    if (!ep) {
      const status = this.tried.size ? 502 : 503;
      return this.reply(status, this.tried.size ? `bad gateway: ${this.lastError}` : `no healthy upstream: no ready endpoint for ${plan.backendKey}`, this.reqPhase !== 'connect' || this.hasBody(), plan.route.id);
    }
    this.tried.add(ep.key);
    const pooled = this.l.router.pooled(ep);
    if (pooled) return this.attach(ep, pooled, true);
    this.l.router.open(ep).then(
      (c) => {
        if (this.closed || this.plan !== plan || this.reqPhase !== 'connect') return this.l.router.done(c, true);
        this.attach(ep, c, false);
      },
      (e: unknown) => {
        if (this.closed || this.plan !== plan || this.reqPhase !== 'connect') return;
        this.lastError = `connecting to ${ep.key}${ep.nodeName ? ` on ${ep.nodeName}` : ''}: ${describeError(e)}`;
        if (this.tried.size > plan.route.retries) return this.reply(502, `bad gateway: ${this.lastError}`, this.hasBody(), plan.route.id);
        this.connect();
      },
    );
  }

  private hasBody(): boolean {
    const f = this.head?.framing;
    return !!f && f.kind !== 'none' && !(f.kind === 'length' && f.length === 0);
  }

  private attach(ep: LbEndpoint, c: UpstreamConn, pooled: boolean): void {
    this.ep = ep;
    this.up = c;
    this.pooledUp = pooled;
    c.owner = this;
    this.l.router.acquire(this.plan!, ep);
    this.resPhase = 'head';
    this.resBuf = EMPTY;
    const f = this.head!.framing;
    this.reqPhase = this.hasBody() ? 'body' : 'done';
    if (f.kind === 'length') this.reqLeft = f.length;
    if (f.kind === 'chunked') this.reqScan = new ChunkScanner();
    this.upWrite(this.upHead);
    if (this.reqPhase === 'body') this.pumpBody();
  }

  private upWrite(b: Uint8Array): void {
    const pipe = this.up?.pipe;
    if (!pipe || !b.length) return;
    this.bytesUp += b.length;
    if (this.upPending) {
      this.upPending = concat(this.upPending, b);
      return;
    }
    const n = pipe.write(b);
    if (n < b.length) {
      this.upPending = b.slice(n);
      this.pauseRead();
    }
  }

  /** Request body bytes from the buffer to the backend, up to the body's end. */
  private pumpBody(): void {
    while (this.reqPhase === 'body' && this.in.length && !this.upPending) {
      let n: number;
      if (this.reqScan) {
        try {
          n = this.reqScan.feed(this.in);
        } catch (e) {
          return this.abort(400, `bad request: ${(e as Error).message}`);
        }
        if (this.reqScan.done) this.reqPhase = 'done';
      } else {
        n = Math.min(this.reqLeft, this.in.length);
        this.reqLeft -= n;
        if (this.reqLeft === 0) this.reqPhase = 'done';
      }
      const part = this.in.subarray(0, n);
      this.in = this.in.subarray(n);
      this.bodySent = true;
      this.upWrite(part);
    }
    if (this.reqPhase === 'body' && this.in.length === 0) this.resumeRead();
  }

  // ---- backend side (UpstreamOwner) ----
  upDrain(): void {
    const p = this.upPending;
    const pipe = this.up?.pipe;
    if (!p || !pipe) return;
    const n = pipe.write(p);
    if (n < p.length) {
      this.upPending = p.subarray(n);
      return;
    }
    this.upPending = null;
    if (this.reqPhase === 'body') this.pumpBody();
    if (this.tunnel || this.reqPhase === 'body') this.resumeRead();
  }

  upData(chunk: Uint8Array): void {
    if (this.tunnel) return this.clientWrite(chunk);
    if (this.resPhase === 'body') return this.resBody(chunk);
    if (this.resPhase !== 'head') return void this.up?.pipe?.terminate();
    this.resBuf = concat(this.resBuf, chunk);
    for (;;) {
      const end = findHeadEnd(this.resBuf);
      if (end < 0) {
        if (this.resBuf.length > MAX_HEAD_BYTES) this.fail(`response head larger than ${MAX_HEAD_BYTES} bytes`);
        return;
      }
      const rh = parseResponseHead(this.resBuf, end);
      if (!rh) return this.fail('malformed response head');
      const rest = this.resBuf.subarray(end);
      this.resBuf = EMPTY;
      if (rh.status === 101 && this.head?.upgrade) {
        this.clientWrite(this.responseHead(rh, false));
        this.toTunnel(rest);
        return;
      }
      if (rh.status >= 100 && rh.status < 200) {
        // Interim (100 Continue, 103 Early Hints): passed on; the final head follows.
        if (this.head?.minor === 1) this.clientWrite(this.responseHead(rh, false));
        this.resBuf = rest;
        continue;
      }
      // retries.retryOn: an answer it names goes to another endpoint while tries remain (requests without a body).
      const plan = this.plan!;
      if (plan.route.retryStatuses.has(rh.status) && !this.hasBody() && this.tried.size <= plan.route.retries && this.l.router.pick(plan, this.clientIP, this.tried)) {
        // Another endpoint is there to try; without one the answer is passed on as it is.
        this.pooledUp = false;
        return this.fail(`answered ${rh.status}`);
      }
      let framing: Framing;
      try {
        framing = responseFraming(rh, this.head!.method);
      } catch (e) {
        return this.fail(`response framing: ${(e as Error).message}`);
      }
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      this.resHead = rh;
      this.resFraming = framing;
      // The client connection ends after this response when it asked to, when the body is delimited by close,
      // or when its request body was not read to the end (framing lost).
      this.willClose = !this.head!.keepAlive || this.clientEnded || framing.kind === 'close' || (this.reqPhase !== 'done' && this.reqPhase !== 'body');
      const headBytes = this.responseHead(rh, this.willClose);
      this.resPhase = 'body';
      if (framing.kind === 'length') this.resLeft = framing.length;
      if (framing.kind === 'chunked') this.resScan = new ChunkScanner();
      if (framing.kind === 'none' || (framing.kind === 'length' && framing.length === 0)) {
        this.clientWrite(headBytes);
        return this.finishResponse();
      }
      if (framing.kind === 'length' && rest.length && rest.length <= framing.length) {
        // The head and the body bytes that came with it leave in one write (one syscall, one segment).
        this.resLeft -= rest.length;
        this.clientWrite(concat(headBytes, rest));
        if (this.resLeft === 0) this.finishResponse();
        return;
      }
      this.clientWrite(headBytes);
      if (rest.length) this.resBody(rest);
      return;
    }
  }

  private responseHead(rh: ResponseHead, close: boolean): Uint8Array {
    const lines = [`HTTP/1.1 ${rh.status} ${rh.reason}`];
    const ops = rh.status >= 200 ? this.plan?.route.responseHeaders : null;
    for (const [k, v] of rh.headers) {
      if (HOP_RESPONSE.has(k)) continue;
      if (ops && !FRAMING.has(k) && (ops.remove.includes(k) || ops.set.some(([n]) => n === k))) continue;
      lines.push(`${k}: ${v}`);
    }
    // Framing headers stay the backend's: a route cannot set or remove content-length or transfer-encoding.
    if (ops) for (const [k, v] of [...ops.set, ...ops.add]) if (!ops.remove.includes(k) && !HOP_RESPONSE.has(k) && !FRAMING.has(k)) lines.push(`${k}: ${v}`);
    if (rh.status === 101) lines.push('connection: upgrade', `upgrade: ${this.head?.upgrade ?? ''}`);
    else if (close) lines.push('connection: close');
    else if (this.head?.minor === 0) lines.push('connection: keep-alive');
    return enc.encode(lines.join('\r\n') + '\r\n\r\n');
  }

  private resBody(b: Uint8Array): void {
    const f = this.resFraming;
    if (f.kind === 'close') return this.clientWrite(b);
    let n: number;
    if (this.resScan) {
      try {
        n = this.resScan.feed(b);
      } catch {
        // The response is half sent: nothing to tell the client but a reset.
        this.up?.pipe?.terminate();
        this.sock?.terminate();
        return;
      }
    } else {
      n = Math.min(this.resLeft, b.length);
      this.resLeft -= n;
    }
    this.clientWrite(n === b.length ? b : b.subarray(0, n));
    if (n < b.length && this.up) this.up.ended = true; // bytes past the response: never reuse this connection
    if (this.resScan ? this.resScan.done : this.resLeft === 0) this.finishResponse();
  }

  private finishResponse(): void {
    const up = this.up!;
    const rh = this.resHead;
    const reusable = !!rh && rh.keepAlive && this.resFraming.kind !== 'close' && this.reqPhase === 'done' && !this.upPending;
    this.up = null;
    up.owner = null;
    if (this.plan && this.ep) this.l.router.release(this.plan, this.ep);
    this.l.router.done(up, reusable);
    const plan = this.plan!;
    const head = this.head!;
    const ep = this.ep;
    const status = rh?.status ?? 0;
    this.l.router.record(plan.route.id, status, (performance.now() - this.t0) / 1000, undefined, () => `${this.clientIP} "${head.method} ${head.target}" ${status} route=${plan.route.id} endpoint=${ep?.key ?? ''}`, { backend: plan.backendKey, up: this.bytesUp, down: this.bytesDown });
    const close = this.willClose || this.reqPhase !== 'done';
    this.resetExchange();
    if (close) return this.endAfterFlush();
    this.nextRequest();
  }

  upEnd(): void {
    if (this.tunnel) return this.sock?.shutdown();
    if (this.resPhase === 'body' && this.resFraming.kind === 'close') return this.finishResponse();
    this.fail('the backend closed the connection before the response ended');
  }

  upClose(reset: boolean): void {
    if (this.tunnel) {
      this.up = null;
      if (reset) this.sock?.terminate();
      else if (!this.outPending) this.sock?.end();
      else this.willClose = true;
      return;
    }
    if (!this.up) return;
    if (!reset && this.resPhase === 'body' && this.resFraming.kind === 'close') return this.finishResponse();
    this.fail(reset ? 'the backend reset the connection' : 'the backend closed the connection before the response ended');
  }

  /** The backend failed this exchange. Before any response byte: retry when safe, else 502. After: reset the client. */
  private fail(why: string): void {
    const up = this.up;
    const plan = this.plan;
    if (up) {
      this.up = null;
      up.owner = null;
      if (plan && this.ep) this.l.router.release(plan, this.ep);
      up.pipe?.terminate();
      this.l.router.done(up, false);
    }
    if (!plan || this.closed) return;
    const ep = this.ep;
    this.lastError = `${ep?.key ?? '?'}: ${why}`;
    if (this.resPhase === 'body') {
      this.sock?.terminate();
      return;
    }
    // Nothing was sent to the client yet. Without a body the request can go again: a pooled connection the
    // backend closed meanwhile gets one fresh try on the same endpoint; otherwise the next endpoint.
    if (!this.hasBody() && this.tried.size <= plan.route.retries) {
      if (this.pooledUp && ep) this.tried.delete(ep.key);
      this.pooledUp = false;
      this.resPhase = 'none';
      this.reqPhase = 'connect';
      return this.connect();
    }
    this.reply(502, `bad gateway: ${this.lastError}`, true, plan.route.id);
  }

  private abort(status: number, why: string): void {
    const up = this.up;
    if (up) {
      this.up = null;
      up.owner = null;
      if (this.plan && this.ep) this.l.router.release(this.plan, this.ep);
      up.pipe?.terminate();
      this.l.router.done(up, false);
    }
    if (this.resPhase === 'body') return void this.sock?.terminate();
    this.reply(status, why, true, this.plan?.route.id);
  }

  private timeout(ms: number): void {
    this.timer = null;
    if (this.resPhase !== 'head' && this.reqPhase !== 'connect') return;
    this.abort(504, `upstream timeout: no response within ${ms} ms`);
  }

  /** 101 Switching Protocols: from here on both directions are bytes (WebSocket). */
  private toTunnel(rest: Uint8Array): void {
    this.tunnel = true;
    this.resPhase = 'body';
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.l.router.record(this.plan!.route.id, 101, (performance.now() - this.t0) / 1000);
    if (rest.length) this.clientWrite(rest);
    const pending = this.in;
    this.in = EMPTY;
    if (pending.length) this.upWrite(pending);
    this.resumeRead();
  }

  /** The deadline sweep. */
  sweep(now: number): void {
    const s = this.l.settings;
    if (this.tunnel) return;
    if (this.reqPhase === 'head' && this.resPhase === 'none') {
      if (this.headStart && now - this.headStart > s.headTimeoutMs) return this.reply(408, `request head not complete within ${s.headTimeoutMs} ms`, true);
      if (!this.in.length && now - this.lastActive > s.idleTimeoutMs) this.sock?.end();
      return;
    }
    if (this.reqPhase === 'body' && now - this.lastActive > s.bodyTimeoutMs) this.abort(408, `request body stalled for ${s.bodyTimeoutMs} ms`);
  }
}

/** One address:port of the gateway: plain HTTP, or HTTPS (tls.ts) when `certs` is given. */
export class HttpListener {
  private readonly base: ConnListener<Client>;
  readonly tls: boolean;

  constructor(readonly address: string, readonly port: number, readonly router: GatewayRouter, readonly settings: ListenerSettings, certs?: () => PortCertificates) {
    this.tls = !!certs;
    this.base = new ConnListener(address, port, () => new Client(this), certs);
  }

  /** Rejects when the address cannot be bound. */
  start(): Promise<void> {
    return this.base.start();
  }

  /** Stops accepting; `drop` also closes the connections it has (otherwise they finish on their own). */
  stop(drop: boolean): void {
    this.base.stop(drop);
  }

  get connections(): number {
    return this.base.conns.size;
  }
}
