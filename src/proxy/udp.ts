/**
 * The UDP data path of one service port: a session per client address:port, each with its own connected
 * upstream socket to the endpoint the balancer chose. Replies leave through the listener socket, which is bound
 * to the DNAT target address (never 0.0.0.0: behind a DNAT, a socket bound to the wildcard replies from the wrong source address and the client answers with ICMP port-unreachable), so conntrack rewrites their source back to the
 * cluster IP the client asked. One datagram in, one datagram out: boundaries are preserved.
 *
 * Sessions end after `idleTimeoutMs` without traffic either way (default 60 s; the original's 250 ms breaks
 * anything that is not a single request/response). Session count is bounded; datagrams that arrive while a
 * session's upstream socket is opening are queued (bounded) and sent once it is ready.
 */
import type { DatagramChannel, RemoteDialer } from '../dial/contract.ts';
import type { Balancer, LbEndpoint } from '../lb/balancer.ts';
import type { Logger } from '../obs/logger.ts';

/** What the UDP path needs of the tunnel (dial/contract.ts): datagrams framed inside one stream. */
export type UdpRemoteDialer = Pick<RemoteDialer, 'openDatagrams'>;

export interface UdpPortOptions {
  host: string;
  port: number;
  balancer: Balancer;
  logger: Logger;
  isLocal: (ep: LbEndpoint) => boolean;
  /** Endpoints on other nodes; absent = their datagrams are dropped. */
  remote?: UdpRemoteDialer;
  /** How long opening a tunnel channel may take. */
  connectTimeoutMs?: number;
  idleTimeoutMs: number;
  maxSessions: number;
}

interface Session {
  key: string;
  addr: string;
  port: number;
  ep: LbEndpoint;
  upstream: DatagramChannel | null;
  queue: Uint8Array[];
  queuedBytes: number;
  lastActive: number;
  closed: boolean;
}

/** Bytes a session may hold while its upstream socket opens (a burst arriving with the first datagram). */
const MAX_QUEUED_BYTES = 1024 * 1024;

export class UdpServicePort {
  private sock: Bun.udp.Socket<'buffer'> | null = null;
  private readonly sessions = new Map<string, Session>();
  private sweep: ReturnType<typeof setInterval> | null = null;
  readonly stats = { accepted: 0, active: 0, datagramsUp: 0, datagramsDown: 0, dropped: 0, noEndpoint: 0 };

  constructor(private readonly o: UdpPortOptions) {}

  get port(): number {
    return this.sock?.port ?? this.o.port;
  }

  async start(): Promise<void> {
    this.sock = await Bun.udpSocket({
      hostname: this.o.host,
      port: this.o.port,
      socket: {
        data: (_s, buf, port, addr) => this.fromClient(buf, port, addr),
        // A client that went away answers with ICMP; without this handler Bun would crash the process.
        error: () => {},
      },
    });
    this.sweep = setInterval(() => this.expire(), Math.max(100, Math.min(this.o.idleTimeoutMs / 2, 5000)));
    this.sweep.unref?.();
  }

  stop(): void {
    if (this.sweep) clearInterval(this.sweep);
    for (const s of [...this.sessions.values()]) this.end(s);
    this.sock?.close();
    this.sock = null;
  }

  private fromClient(buf: Uint8Array, port: number, addr: string): void {
    const key = `${addr}|${port}`;
    let s = this.sessions.get(key);
    if (!s) {
      if (this.sessions.size >= this.o.maxSessions) {
        this.stats.dropped++;
        return;
      }
      const ep = this.o.balancer.pick({ clientIP: addr });
      const local = ep ? this.o.isLocal(ep) : false;
      if (!ep || (!local && !this.o.remote)) {
        this.stats[ep ? 'dropped' : 'noEndpoint']++;
        return;
      }
      s = { key, addr, port, ep, upstream: null, queue: [], queuedBytes: 0, lastActive: performance.now(), closed: false };
      this.sessions.set(key, s);
      this.stats.accepted++;
      this.stats.active++;
      this.o.balancer.acquire(ep.key);
      if (local) this.open(s);
      else this.openRemote(s);
    }
    s.lastActive = performance.now();
    this.stats.datagramsUp++;
    if (!s.upstream) {
      if (s.queuedBytes + buf.length <= MAX_QUEUED_BYTES) {
        s.queue.push(buf);
        s.queuedBytes += buf.length;
      } else this.stats.dropped++;
      return;
    }
    this.sendUp(s, buf);
  }

  private open(s: Session): void {
    Bun.udpSocket({
      connect: { hostname: s.ep.ip, port: s.ep.port },
      socket: {
        data: (_u, reply) => this.toClient(s, reply),
        // ECONNREFUSED from an endpoint without a listener: the client sees a timeout, as with the original.
        error: () => {},
      },
    }).then(
      (u) => this.opened(s, u),
      (err) => {
        this.o.logger.debug('cannot open an upstream UDP socket', { endpoint: s.ep.key, error: String(err) });
        this.end(s);
      },
    );
  }

  /** A reply from the endpoint goes back to the session's client from the listener socket (the service address). */
  private toClient(s: Session, reply: Uint8Array): void {
    if (s.closed || !this.sock) return;
    s.lastActive = performance.now();
    this.stats.datagramsDown++;
    try {
      this.sock.send(reply, s.port, s.addr);
    } catch {
      this.stats.dropped++;
    }
  }

  private openRemote(s: Session): void {
    const toClient = (reply: Uint8Array): void => this.toClient(s, reply);
    const t = { nodeName: s.ep.nodeName, protocol: 'udp' as const, ip: s.ep.ip, port: s.ep.port };
    this.o.remote!.openDatagrams(t, { datagram: toClient, closed: () => this.end(s) }, AbortSignal.timeout(this.o.connectTimeoutMs ?? 5000)).then(
      (ch) => this.opened(s, ch),
      (err) => {
        this.o.logger.debug('cannot open a tunnel channel for UDP', { endpoint: s.ep.key, node: s.ep.nodeName, error: String(err) });
        this.end(s);
      },
    );
  }

  private opened(s: Session, u: DatagramChannel): void {
    if (s.closed) {
      u.close();
      return;
    }
    s.upstream = u;
    for (const q of s.queue) this.sendUp(s, q);
    s.queue = [];
    s.queuedBytes = 0;
  }

  private sendUp(s: Session, buf: Uint8Array): void {
    try {
      s.upstream!.send(buf);
    } catch {
      this.stats.dropped++;
    }
  }

  private expire(): void {
    const now = performance.now();
    for (const s of this.sessions.values()) if (now - s.lastActive > this.o.idleTimeoutMs) this.end(s);
  }

  private end(s: Session): void {
    if (s.closed) return;
    s.closed = true;
    this.sessions.delete(s.key);
    this.stats.active--;
    this.o.balancer.release(s.ep.key);
    s.upstream?.close();
  }
}
