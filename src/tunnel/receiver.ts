/**
 * tunnel/ — the receiving end: CONNECTs from peers (/libp2p/tunnel-proxy/1.0.0, one stream per connection, and
 * session streams, many connections one after another), each checked, dialed here and pumped.
 *
 * What may be dialed: only IP literals (a name would be resolved here, and a node's hostname can map to
 * 127.0.0.1); only endpoints that the catalog places on this node, or, for TCP, this node's own InternalIP and
 * ExternalIP addresses at a port of edgeTunnel.nodePorts (SOCKS5 reaches a node that way, ssh by default); and
 * only for peers bound to some node. Anything else gets FAILED, counted and logged. The original dials whatever
 * it is asked to (an open proxy into every node's network).
 * Local endpoints are dialed with three attempts (dial/local.ts), as the original's receiver does.
 */
import type { Connection, PeerId, Stream } from '@libp2p/interface';
import { isIP } from 'node:net';
import type { Catalog, CatalogSnapshot } from '../catalog/catalog.ts';
import type { Pipe, PipeHandlers } from '../dial/contract.ts';
import { LocalDialer, type LocalSocket } from '../dial/local.ts';
import { Pump } from '../dial/pump.ts';
import type { Logger } from '../obs/logger.ts';
import type { PeerBook } from './peers.ts';
import { StreamPipe } from './pipe.ts';
import { SESSION_IDLE_MS } from './pool.ts';
import { DatagramDeframer, MAX_DATAGRAM, MsgType, UDP_STREAM_LIMIT, type ProxyMsg, decodeProxy, encodeProxy, frameDatagram, lengthPrefixed, readOne } from './protocol.ts';
import { Session } from './session.ts';
import type { TunnelStats } from './status.ts';

/** How long a UDP flow through the tunnel lives without datagrams in either direction. */
const UDP_IDLE_MS = 60_000;
/** A session's SUCCESS carries only its type: the dialer knows what it asked for (older dialers decode it too). */
const SESSION_SUCCESS = encodeProxy({ type: MsgType.SUCCESS });

export interface ReceiverDeps {
  nodeName: string;
  /** Ports of this node's own addresses a peer may have it dial (edgeTunnel.nodePorts). */
  nodePorts: readonly number[];
  catalog: Catalog;
  peers: PeerBook;
  handshakeTimeoutMs: number;
  stats: TunnelStats;
  logger: Logger;
}

export class Receiver {
  /** Pumps and UDP flows open now, closed with the module. */
  private readonly active = new Set<{ close(): void }>();
  /** ip|port|PROTO of every endpoint the catalog places on this node; rebuilt once per catalog version. */
  private localIndex: { version: number; keys: Set<string> } | null = null;
  private readonly local = new LocalDialer({ timeoutMs: 5000, attempts: 3 });

  constructor(private readonly d: ReceiverDeps) {}

  stop(): void {
    this.local.stop();
    for (const a of [...this.active]) a.close();
  }

  /** Why a CONNECT must be refused, or null when it names an endpoint this node may dial. */
  refusal(from: PeerId, protocol: string, ip: string, port: number): string | null {
    if (protocol !== 'tcp' && protocol !== 'udp') return `unknown protocol ${JSON.stringify(protocol)}`;
    if (!(port > 0 && port < 65536)) return `bad port ${port}`;
    if (isIP(ip) === 0) return `${JSON.stringify(ip)} is not an IP address (names are never resolved for a peer)`;
    if (!this.d.peers.isBound(from)) return 'the requesting peer is not bound to any node in the catalog';
    const snap = this.d.catalog.snapshot();
    if (this.localEndpoints(snap).has(`${ip}|${port}|${protocol === 'tcp' ? 'TCP' : 'UDP'}`)) return null;
    // SOCKS5 reaches a node itself (e.g. ssh): the node's own addresses, at the ports the operator allows.
    const self = snap.nodes.get(this.d.nodeName);
    if (protocol === 'tcp' && self?.addresses.some((a) => (a.type === 'InternalIP' || a.type === 'ExternalIP') && a.address === ip)) {
      if (this.d.nodePorts.includes(port)) return null;
      return `port ${port} of this node's address ${ip} is not in modules.edgeTunnel.nodePorts [${this.d.nodePorts.join(', ')}]`;
    }
    return `${protocol} ${ip}:${port} is not an endpoint on node ${this.d.nodeName}`;
  }

  private localEndpoints(snap: CatalogSnapshot): Set<string> {
    if (this.localIndex?.version === snap.version) return this.localIndex.keys;
    const keys = new Set<string>();
    for (const se of snap.endpoints.values()) {
      for (const ep of se.endpoints) {
        if (ep.nodeName !== this.d.nodeName) continue;
        for (const p of ep.ports) keys.add(`${ep.ip}|${p.port}|${p.protocol}`);
      }
    }
    this.localIndex = { version: snap.version, keys };
    return keys;
  }

  /** /libp2p/tunnel-proxy/1.0.0: one CONNECT, then the stream is the connection (TCP) or its datagrams (UDP). */
  async onProxy(s: Stream, conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.d.handshakeTimeoutMs);
    let req: ProxyMsg;
    try {
      req = decodeProxy(await readOne(s, signal));
      if (req.type !== MsgType.CONNECT) throw new Error('expected CONNECT');
    } catch (e) {
      s.abort(e as Error);
      return;
    }
    const why = this.refusal(conn.remotePeer, req.protocol, req.ip, req.port);
    const fail = async (reason: string): Promise<void> => {
      this.logRefusal(conn, req, reason);
      try {
        s.send(lengthPrefixed(encodeProxy({ type: MsgType.FAILED })));
        await s.close({ signal });
      } catch {
        s.abort(new Error(reason));
      }
    };
    if (why) return fail(why);
    const success = encodeProxy({ ...req, type: MsgType.SUCCESS });
    if (req.protocol === 'udp') return this.serveUdp(s, req.ip, req.port, success, fail);
    const pump = this.newPump();
    const socket = await this.connect(req.ip, req.port, pump);
    if (typeof socket === 'string') {
      pump.close(true);
      return fail(`connect failed: ${socket}`);
    }
    this.d.stats.streamsIn++;
    s.send(lengthPrefixed(success));
    this.attachTunnelEnd(pump, (h) => new StreamPipe(s, h));
  }

  /** The receiving end of a session stream: CONNECT after CONNECT, each checked like the proxy protocol's. */
  onSession(stream: Stream, conn: Connection): void {
    let idle: ReturnType<typeof setTimeout> | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => session.close(), 2 * SESSION_IDLE_MS);
      idle.unref?.();
    };
    const session = new Session(stream, {
      message: (s, msg) => {
        clearTimeout(idle);
        this.sessionConnect(s, conn, msg, arm).catch((e: unknown) => s.kill(e as Error));
      },
      released: (s) => {
        s.expectConnect();
        arm();
      },
      gone: () => clearTimeout(idle),
    }, 'handshake');
    arm();
  }

  private async sessionConnect(s: Session, conn: Connection, msg: Uint8Array, arm: () => void): Promise<void> {
    const req = decodeProxy(msg);
    if (req.type !== MsgType.CONNECT) throw new Error('expected CONNECT');
    const fail = (reason: string): void => {
      this.logRefusal(conn, req, reason);
      if (s.dead) return;
      s.expectConnect();
      s.sendMessage(encodeProxy({ type: MsgType.FAILED }));
      arm();
    };
    const why = req.protocol === 'udp' ? 'UDP goes through /libp2p/tunnel-proxy/1.0.0, not sessions' : this.refusal(conn.remotePeer, req.protocol, req.ip, req.port);
    if (why) return fail(why);
    const pump = this.newPump();
    const socket = await this.connect(req.ip, req.port, pump);
    if (typeof socket === 'string') {
      pump.close(true);
      return fail(`connect failed: ${socket}`);
    }
    if (s.dead) {
      socket.terminate();
      return;
    }
    this.d.stats.streamsIn++;
    s.sendMessage(SESSION_SUCCESS);
    this.attachTunnelEnd(pump, (h) => s.attach(h, false));
    // The connection's first bytes came with its CONNECT (1.1): they go first, with the pump's backpressure.
    if (req.early) pump.data(1, req.early.slice());
  }

  /** A pump for an endpoint connection, closed with the module (stop()). */
  private newPump(): Pump {
    const entry = { close: () => pump.close(true) };
    const pump = new Pump(() => this.active.delete(entry));
    this.active.add(entry);
    return pump;
  }

  /**
   * Dial the endpoint; its socket is the pump's end 0 from the moment it opens (what it sends before the tunnel
   * end is attached is held there). The socket, or why every attempt failed.
   */
  private connect(ip: string, port: number, pump: Pump): Promise<LocalSocket | string> {
    return new Promise((resolve) => {
      this.local.dial(ip, port, {
        localOpened: (sock) => {
          pump.attach(0, sock);
          resolve(sock);
          return true;
        },
        localFailed: (why) => resolve(why),
        localData: (d) => pump.data(0, d),
        localDrain: () => pump.drain(0),
        localEnd: () => pump.end(0),
        localClose: (reset) => pump.close(reset),
      });
    });
  }

  /** Join the tunnel end of a connection (a stream, or a session's FramedEnd) as the pump's end 1. */
  private attachTunnelEnd(pump: Pump, tunnelEnd: (h: PipeHandlers) => Pipe): void {
    pump.attach(1, tunnelEnd({
      data: (d) => pump.data(1, d),
      drain: () => pump.drain(1),
      end: () => pump.end(1),
      close: (reset) => pump.close(reset),
    }));
  }

  /** Count and log a refused CONNECT (either protocol). */
  private logRefusal(conn: Connection, req: ProxyMsg, reason: string): void {
    this.d.stats.refused++;
    this.d.logger.warn('refused a tunnel CONNECT', { peer: conn.remotePeer.toString(), node: this.d.peers.nodeOf(conn.remotePeer) ?? '?', target: `${req.protocol} ${req.ip}:${req.port}`, reason });
  }

  private async serveUdp(stream: Stream, ip: string, port: number, success: Uint8Array, fail: (why: string) => Promise<void>): Promise<void> {
    let idle: ReturnType<typeof setTimeout>;
    let closed = false;
    const entry = { close: () => finish() };
    const finish = (): void => {
      if (closed) return;
      closed = true;
      clearTimeout(idle);
      this.active.delete(entry);
      sock?.close();
      stream.close().catch(() => stream.abort(new Error('closing')));
    };
    const touch = (): void => {
      clearTimeout(idle);
      idle = setTimeout(finish, UDP_IDLE_MS);
    };
    let sock: Awaited<ReturnType<typeof Bun.udpSocket>> | null = null;
    try {
      sock = await Bun.udpSocket({
        connect: { hostname: ip, port },
        socket: {
          data: (_s, buf) => {
            touch();
            if (buf.length > MAX_DATAGRAM) return;
            // The peer reads slower than the endpoint sends: drop rather than buffer without bound.
            if (stream.writeBufferLength >= UDP_STREAM_LIMIT) this.d.stats.udpDropped++;
            else stream.send(frameDatagram(buf));
          },
          // ICMP port unreachable from an endpoint with no listener arrives here as ECONNREFUSED. Without this
          // handler Bun raises it as an uncaught error and the agent exits: any peer could end a node by sending
          // to one of its endpoints that is down. The flow stays open: the endpoint may come back, as with UDP.
          error: () => void this.d.stats.udpRefused++,
        },
      });
    } catch (e) {
      return fail(`udp socket: ${(e as Error).message}`);
    }
    this.d.stats.streamsIn++;
    this.active.add(entry);
    stream.send(lengthPrefixed(success));
    const deframer = new DatagramDeframer();
    stream.addEventListener('message', (evt) => {
      touch();
      const d = evt.data;
      for (const c of d instanceof Uint8Array ? [d] : d) deframer.push(c, (dg) => this.sendTo(sock!, dg));
    });
    stream.addEventListener('remoteCloseWrite', finish);
    stream.addEventListener('close', finish);
    touch();
  }

  /** A datagram to the endpoint; a send the kernel refuses (ICMP from an earlier one, a full buffer) is counted and dropped. */
  private sendTo(sock: Bun.udp.ConnectedSocket<'buffer'>, dg: Uint8Array): void {
    try {
      sock.send(dg);
    } catch {
      this.d.stats.udpRefused++;
    }
  }
}
