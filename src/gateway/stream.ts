/**
 * gateway/ — byte-stream server ports: `TCP` servers (one destination per port, from the VirtualServices' `tcp`
 * routes; also `TLS` servers in SIMPLE or MUTUAL mode, TLS terminated by tls.ts first) and TLS passthrough (`TLS` servers, or `HTTPS` with `mode: PASSTHROUGH`), routed by the SNI name of the
 * client's ClientHello to the `tls` route whose `sniHosts` match it, the bytes passed on untouched (the backend
 * terminates TLS). Each connection is a Pump (dial/pump.ts) between the client socket and a pipe to an endpoint
 * (local or through the tunnel), so backpressure, half-close and resets behave as in the proxy.
 *
 * The ClientHello is read up to 16 KiB and requestHeadTimeoutMs; a connection whose first bytes are not a
 * ClientHello with a server name, or whose name no route takes, is closed.
 */
import type { Pipe } from '../dial/contract.ts';
import { Pump } from '../dial/pump.ts';
import { describeError } from '../errors.ts';
import type { LbEndpoint } from '../lb/balancer.ts';
import { ConnListener, type ListenedConn } from './listen.ts';
import type { ClientSock } from './sock.ts';
import type { PortCertificates } from './tls.ts';

const MAX_HELLO = 16 * 1024;

/** The server name of a TLS ClientHello at the start of `b`; null: not one (or no SNI); undefined: need more bytes. */
export function clientHelloSni(b: Uint8Array): string | null | undefined {
  // Handshake records, their payloads joined (a ClientHello may span records).
  let payload = new Uint8Array(0);
  let off = 0;
  for (;;) {
    if (b.length < off + 5) return undefined;
    if (b[off] !== 0x16 || b[off + 1] !== 3) return null;
    const len = (b[off + 3]! << 8) | b[off + 4]!;
    if (len === 0 || len > 16384 + 2048) return null;
    if (b.length < off + 5 + len) return undefined;
    const joined = new Uint8Array(payload.length + len);
    joined.set(payload);
    joined.set(b.subarray(off + 5, off + 5 + len), payload.length);
    payload = joined;
    off += 5 + len;
    if (payload.length < 4) continue;
    if (payload[0] !== 1) return null; // not a ClientHello
    const hlen = (payload[1]! << 16) | (payload[2]! << 8) | payload[3]!;
    if (hlen > MAX_HELLO) return null;
    if (payload.length >= 4 + hlen) return sniFromHello(payload.subarray(4, 4 + hlen));
  }
}

function sniFromHello(h: Uint8Array): string | null {
  let p = 2 + 32; // version, random
  if (p >= h.length) return null;
  p += 1 + h[p]!; // session id
  if (p + 2 > h.length) return null;
  p += 2 + ((h[p]! << 8) | h[p + 1]!); // cipher suites
  if (p >= h.length) return null;
  p += 1 + h[p]!; // compression methods
  if (p + 2 > h.length) return null;
  const end = Math.min(h.length, p + 2 + ((h[p]! << 8) | h[p + 1]!));
  p += 2;
  while (p + 4 <= end) {
    const type = (h[p]! << 8) | h[p + 1]!;
    const len = (h[p + 2]! << 8) | h[p + 3]!;
    p += 4;
    if (p + len > end) return null;
    if (type === 0) {
      // server_name: a list; the first host_name entry.
      let q = p + 2;
      const listEnd = Math.min(p + len, p + 2 + ((h[p]! << 8) | h[p + 1]!));
      while (q + 3 <= listEnd) {
        const kind = h[q]!;
        const n = (h[q + 1]! << 8) | h[q + 2]!;
        q += 3;
        if (q + n > listEnd) return null;
        if (kind === 0) {
          const name = Buffer.from(h.buffer, h.byteOffset + q, n).toString('latin1');
          return /^[A-Za-z0-9._-]{1,253}$/.test(name) ? name.toLowerCase() : null;
        }
        q += n;
      }
      return null;
    }
    p += len;
  }
  return null;
}

export interface StreamPlan {
  routeId: string;
  backendKey: string;
}

export interface StreamRouter {
  tcpPlan(port: number): StreamPlan | string;
  tlsPlan(port: number, sni: string): StreamPlan | string;
  pickFor(backendKey: string, clientIP: string, tried: ReadonlySet<string>): LbEndpoint | null;
  openPipe(ep: LbEndpoint, h: import('../dial/contract.ts').PipeHandlers): Promise<Pipe>;
  recordConnection(routeId: string, outcome: 'ok' | 'refused' | 'failed', error?: string): void;
}

class StreamConn extends Pump implements ListenedConn {
  sock: ClientSock | null = null;
  hello: Uint8Array | null = null;
  started = Date.now();
  routing = true;
  clientIP = '';
  readonly tried = new Set<string>();

  constructor(readonly l: StreamListener) {
    super();
  }

  // ---- ListenedConn: the listener calls these ----
  sockOpened(s: ClientSock, remoteAddress: string): void {
    this.sock = s;
    this.clientIP = remoteAddress;
    this.attach(0, s);
    if (this.l.mode === 'tcp') this.route(null);
  }

  sockDrain(): void {
    this.drain(0);
  }

  sockEnd(): void {
    this.end(0);
  }

  sockClosed(reset: boolean): void {
    this.close(reset);
  }

  sockData(chunk: Uint8Array): void {
    if (!this.routing) return void this.data(0, chunk);
    // Held by the pump until the backend is attached; the client waits meanwhile (attach resumes it).
    if (this.l.mode === 'tcp') return this.hold(chunk);
    const buf = this.hello ? Buffer.concat([this.hello, chunk]) : new Uint8Array(chunk);
    this.hello = buf;
    const sni = clientHelloSni(buf);
    if (sni === undefined) {
      if (buf.length > MAX_HELLO + 5) this.refuse('a ClientHello larger than 16 KiB');
      return;
    }
    if (sni === null) return this.refuse('the first bytes are not a TLS ClientHello with a server name');
    this.hello = null;
    this.hold(buf);
    this.route(sni);
  }

  private hold(b: Uint8Array): void {
    if (!this.data(0, b)) this.sock?.pause();
  }

  private refuse(why: string, routeId = '(none)'): void {
    this.l.router.recordConnection(routeId, 'refused', why);
    this.routing = false;
    this.sock?.end();
  }

  private route(sni: string | null): void {
    const plan = sni === null ? this.l.router.tcpPlan(this.l.port) : this.l.router.tlsPlan(this.l.port, sni);
    if (typeof plan === 'string') return this.refuse(plan);
    this.connect(plan);
  }

  private connect(plan: StreamPlan): void {
    const ep = this.l.router.pickFor(plan.backendKey, this.clientIP, this.tried);
    if (!ep) return this.refuse(this.tried.size ? `every endpoint of ${plan.backendKey} failed` : `no ready endpoint for ${plan.backendKey}`, plan.routeId);
    this.tried.add(ep.key);
    this.l.router.openPipe(ep, { data: (c) => void this.data(1, c), drain: () => this.drain(1), end: () => this.end(1), close: (r) => this.close(r) }).then(
      (p) => {
        if (this.closed) return p.terminate();
        this.routing = false;
        this.attach(1, p);
        this.l.router.recordConnection(plan.routeId, 'ok');
      },
      (e: unknown) => {
        if (this.closed) return;
        this.l.router.recordConnection(plan.routeId, 'failed', `${ep.key}: ${describeError(e)}`);
        if (this.tried.size < 3) this.connect(plan);
        else this.refuse(`every endpoint of ${plan.backendKey} failed`, plan.routeId);
      },
    );
  }

  sweep(now: number): void {
    if (this.routing && this.l.mode === 'tls' && now - this.started > this.l.helloTimeoutMs) this.refuse(`no ClientHello within ${this.l.helloTimeoutMs} ms`);
  }
}

/**
 * One address:port of a TCP or TLS passthrough server; with `certs`, a TLS server terminated here whose decrypted
 * bytes go to the port's tcp route (`TLS` servers in SIMPLE or MUTUAL mode).
 */
export class StreamListener {
  private readonly base: ConnListener<StreamConn>;

  constructor(readonly address: string, readonly port: number, readonly mode: 'tcp' | 'tls', readonly router: StreamRouter, readonly helloTimeoutMs: number, certs?: () => PortCertificates) {
    this.base = new ConnListener(address, port, () => new StreamConn(this), certs);
  }

  start(): Promise<void> {
    return this.base.start();
  }

  stop(drop: boolean): void {
    this.base.stop(drop);
  }
}
