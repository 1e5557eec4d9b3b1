/**
 * tunnel/ — EdgeTunnel: the libp2p node that carries proxied connections to endpoints on other nodes. It
 * implements dial/'s RemoteDialer; the composition root hands it to the Dialer, so nothing imports it for that.
 *
 *   applyLibraryPatches(log);   // once per process (patches/index.ts)
 *   const tunnel = new TunnelModule({ config, nodeName, catalog, privateKey, psk, logger, metrics });
 *   await tunnel.start();
 *   const pipe = await tunnel.open({ nodeName: 'edge-b', protocol: 'tcp', ip: '10.244.1.7', port: 80 }, handlers, signal);
 *   // `pipe` is a socket-shaped byte pipe to 10.244.1.7:80, dialed by edge-b's agent (dial/contract.ts)
 *
 * The parts, each with its neighbours injected:
 *   node.ts       the libp2p node: TCP on Bun sockets (transport.ts) → TLS 1.3 with the PSK proven inside it, or
 *                 pnet (XSalsa20) under TLS or Noise (security/) → yamux; circuit relay v2; the relay server
 *   peers.ts      who is who: peer IDs bound to node names in the catalog
 *   relays.ts     connections and reservations on every relay, the live relay list
 *   discovery.ts  the discovery handshake (names checked against the binding)
 *   pool.ts       the dialer's session streams (session.ts: many proxied connections per stream)
 *   receiver.ts   what a peer may have this node dial, and the pumps to those endpoints
 *   punch.ts      hole punching (DCUtR) from one fixed source port
 *   status.ts     counters, peers with path and round trip, metrics
 */
import type { Connection, Libp2p, PeerId, PrivateKey, Stream } from '@libp2p/interface';
import type { Multiaddr } from '@multiformats/multiaddr';
import type { Catalog } from '../catalog/catalog.ts';
import type { DatagramChannel, DatagramHandlers, PipeHandlers, RemoteDialer, RemotePipe, RemoteTarget } from '../dial/contract.ts';
import { EdgeMeshError } from '../errors.ts';
import { FixedPort } from '../net/fixed-port.ts';
import type { Logger } from '../obs/logger.ts';
import type { MetricsRegistry } from '../obs/metrics.ts';
import type { TunnelConfig } from './config.ts';
import { Discovery } from './discovery.ts';
import { buildNode, startError } from './node.ts';
import { Admission } from './admission.ts';
import { StreamLimits } from './limits.ts';
import { everyMs } from '../obs/logger.ts';
import { BindingWatch, PEER_ID_ANNOTATION, PeerBook, bestConnection } from './peers.ts';
import { StreamPipe } from './pipe.ts';
import { SessionPool, SessionsUnsupported } from './pool.ts';
import { DatagramDeframer, MAX_DATAGRAM, MsgType, PROXY_PROTOCOL, UDP_STREAM_LIMIT, decodeProxy, encodeProxy, frameDatagram, lengthPrefixed, readOne } from './protocol.ts';
import { HolePuncher } from './punch.ts';
import { Receiver } from './receiver.ts';
import { Relays } from './relays.ts';
import { SESSION_PROTOCOL, SESSION_PROTOCOL_EARLY } from './session.ts';
import { type NodeFacts, TunnelReporter, type TunnelStats, type TunnelStatus, newStats } from './status.ts';
import type { BunTcpInit } from './transport.ts';

export type { TunnelConfig } from './config.ts';
export { ADDRESSES_ANNOTATION, PEER_ID_ANNOTATION, toMultiaddr } from './peers.ts';
export { listenAddresses } from './node.ts';
export type { PeerStatus, TunnelStatus } from './status.ts';

export interface TunnelDeps {
  config: TunnelConfig;
  nodeName: string;
  catalog: Catalog;
  privateKey: PrivateKey;
  /** The 32-byte private-network key, or null when psk.enable is false. */
  psk: Uint8Array | null;
  logger: Logger;
  metrics?: MetricsRegistry;
}

export class TunnelModule implements RemoteDialer {
  private node: Libp2p | null = null;
  private encryption = '';
  private readonly stats: TunnelStats = newStats();
  private readonly peers: PeerBook;
  private readonly relays: Relays;
  private readonly discovery: Discovery;
  private readonly pool: SessionPool;
  private readonly receiver: Receiver;
  private readonly reporter: TunnelReporter;
  private fixedPort: FixedPort | null = null;
  private puncher: HolePuncher | null = null;
  private bindings: BindingWatch | null = null;
  private admission: Admission | null = null;
  private inLimits = new StreamLimits({ perPeer: 1 << 20, total: 1 << 30 });
  private outLimits = new StreamLimits({ perPeer: 1 << 20, total: 1 << 30 });
  /** Warnings about refusals strangers can provoke: at most one every 10 s each (the counters keep the rest). */
  private readonly limitWarning = everyMs(10_000);
  private readonly relayWarning = everyMs(10_000);
  private unwatchBindings: (() => void) | null = null;

  constructor(private readonly d: TunnelDeps) {
    const c = d.config;
    this.peers = new PeerBook(d.catalog, c.listenPort);
    this.relays = new Relays({ config: c, nodeName: d.nodeName, peers: this.peers, logger: d.logger });
    this.discovery = new Discovery({ nodeName: d.nodeName, peers: this.peers, handshakeTimeoutMs: c.handshakeTimeoutMs, stats: this.stats, logger: d.logger });
    this.pool = new SessionPool({
      stats: this.stats,
      newStream: (t, protocols, signal) => this.newStream(t, protocols, signal),
      bestConnection: (peer) => bestConnection(this.node, peer),
    });
    this.receiver = new Receiver({ nodeName: d.nodeName, nodePorts: c.nodePorts, catalog: d.catalog, peers: this.peers, handshakeTimeoutMs: c.handshakeTimeoutMs, stats: this.stats, logger: d.logger });
    this.reporter = new TunnelReporter({ peers: this.peers, stats: this.stats, metrics: d.metrics });
  }

  get peerId(): string {
    return this.node?.peerId.toString() ?? '';
  }

  async start(): Promise<void> {
    const c = this.d.config;
    const log = this.d.logger;
    if (c.transport !== 'tcp') log.warn(`modules.edgeTunnel.transport: "${c.transport}" is not built; the tunnel uses tcp`);
    // Every outbound connection leaves from one port, so the mapping a relay observes is the one a punch uses.
    this.fixedPort = c.holePunching ? FixedPort.open() : null;
    if (c.holePunching && !this.fixedPort) log.warn('hole punching off: could not reserve a fixed source port through libc (bun:ffi)');
    this.admission = new Admission({ trusted: (ip) => this.peers.isNodeAddress(ip) || this.relays.isRelayAddress(ip) });
    const transport: BunTcpInit = { fixedPort: this.fixedPort, connectTimeoutMs: c.handshakeTimeoutMs, admission: this.admission };
    const built = await buildNode({
      config: c, privateKey: this.d.privateKey, psk: this.d.psk, relays: this.relays, transport, logger: log,
      onPskFailure: (f) => this.pskFailed(f),
      isBound: (peer) => this.peers.isBound(peer),
      onRelayRefused: (what, peer) => this.relayRefused(what, peer),
    });
    const node = built.node;
    this.node = node;
    this.encryption = built.encryption;
    this.relays.attach(node);
    const limits = c.tunnelLimitConfig;
    const maxIn = limits.enable ? limits.tunnelPeerBaseStreamIn : 1 << 20;
    const maxOut = limits.enable ? limits.tunnelPeerBaseStreamOut : 1 << 20;
    // Per peer across its connections, and in all (limits.ts); libp2p's per-connection limits, checked before
    // our handler, stay as a backstop above ours so that ours decides (and counts).
    this.inLimits = new StreamLimits({ perPeer: maxIn, total: limits.enable ? limits.tunnelBaseStreamIn : 1 << 30 });
    this.outLimits = new StreamLimits({ perPeer: maxOut, total: limits.enable ? limits.tunnelBaseStreamOut : 1 << 30 });
    const admit = (s: Stream, conn: Connection): boolean => {
      const why = this.inLimits.take(conn.remotePeer.toString(), s);
      if (why === 'ok') return true;
      this.streamLimited('inbound', why, conn.remotePeer.toString());
      s.abort(new Error(`stream limit: ${why === 'peer' ? 'tunnelPeerBaseStreamIn' : 'tunnelBaseStreamIn'} reached`));
      return false;
    };
    await node.handle(PROXY_PROTOCOL, (s, conn) => (admit(s, conn) ? this.receiver.onProxy(s, conn) : undefined), { runOnLimitedConnection: true, maxInboundStreams: 2 * maxIn, maxOutboundStreams: 2 * maxOut });
    await node.handle([SESSION_PROTOCOL_EARLY, SESSION_PROTOCOL], (s, conn) => (admit(s, conn) ? this.receiver.onSession(s, conn) : undefined), { runOnLimitedConnection: true, maxInboundStreams: 2 * maxIn, maxOutboundStreams: 2 * maxOut });
    await this.discovery.attach(node);
    if (this.fixedPort) {
      this.puncher = new HolePuncher({
        node, transport, log: log.child('punch'), timeoutMs: c.handshakeTimeoutMs, isBound: (peer) => this.peers.isBound(peer),
        onPunched: (peer, relayed, ms) => {
          log.info('hole punched: direct connection', { node: this.peers.nodeOf(peer) ?? '?', peer: peer.toString(), ms: Math.round(ms) });
          this.retire(relayed);
        },
      });
      await this.puncher.start();
    }
    try {
      await node.start();
    } catch (e) {
      throw startError(e);
    }
    this.bindings = new BindingWatch({ catalog: this.d.catalog, nodeName: this.d.nodeName, ownPeerId: node.peerId.toString(), logger: log });
    this.unwatchBindings = this.bindings.start();
    this.reporter.registerMetrics(() => this.facts());
    log.info('tunnel started', { peerId: node.peerId.toString(), encryption: this.encryption, listen: node.getMultiaddrs().map(String), relay: this.relays.isRelay });
    this.relays.start();
    this.reporter.start(node);
  }

  async stop(): Promise<void> {
    this.unwatchBindings?.();
    this.unwatchBindings = null;
    this.reporter.stop();
    this.relays.stop();
    this.admission?.stop();
    this.pool.stop();
    this.fixedPort?.close();
    this.fixedPort = null;
    this.receiver.stop();
    const node = this.node;
    this.node = null;
    if (node) await node.stop();
  }

  /** The peer ID the catalog binds to `nodeName`, or null. */
  peerOf(nodeName: string): PeerId | null {
    return this.peers.peerOf(nodeName);
  }

  /** The relay list changed in the config file. */
  setRelayNodes(list: TunnelConfig['relayNodes']): Promise<void> {
    return this.relays.set(list);
  }

  // ---- RemoteDialer ----

  /** Session streams can carry a connection's first bytes with its CONNECT (the proxy waits a moment for them). */
  get takesEarly(): boolean {
    return this.d.config.sessions;
  }

  async open(t: RemoteTarget, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<RemotePipe> {
    if (t.protocol === 'tcp' && this.d.config.sessions) {
      const peer = this.peers.peerOf(t.nodeName);
      if (peer && this.pool.speaksSessions(peer)) {
        try {
          return await this.pool.connect(t, peer, h, signal, early);
        } catch (e) {
          // An older edgemesh or the Go original: one stream per connection, as before.
          if (!(e instanceof SessionsUnsupported)) throw e;
        }
      }
    }
    const stream = await this.openStream(t, signal);
    stream.pause(); // the caller resumes once it has paired the pipe with its client
    return new StreamPipe(stream, h);
  }

  async openDatagrams(t: RemoteTarget, h: DatagramHandlers, signal: AbortSignal): Promise<DatagramChannel> {
    const stream = await this.openStream(t, signal);
    const deframer = new DatagramDeframer();
    stream.addEventListener('message', (evt) => {
      const d = evt.data;
      for (const c of d instanceof Uint8Array ? [d] : d) deframer.push(c, h.datagram);
    });
    stream.addEventListener('close', () => h.closed());
    stream.addEventListener('remoteCloseWrite', () => stream.close().catch(() => {}));
    return {
      // UDP may drop: a stream that cannot keep up loses datagrams rather than buffering without bound.
      send: (d) => {
        if (stream.writeStatus !== 'writable' || d.length > MAX_DATAGRAM) return;
        if (stream.writeBufferLength >= UDP_STREAM_LIMIT) this.stats.udpDropped++;
        else stream.send(frameDatagram(d));
      },
      close: () => {
        stream.close().catch(() => stream.abort(new Error('closing')));
      },
    };
  }

  /**
   * Whether an endpoint on another node can skip the tunnel: a hostNetwork endpoint whose IP is the address of a
   * direct, authenticated connection to that very node (TLS/Noise proved the node's key at that IP). Subnet
   * matching alone is not enough: two edge LANs often use the same private range.
   */
  reachesDirectly(nodeName: string, ip: string): boolean {
    if (!this.d.config.directHostEndpoints || !this.node) return false;
    const peer = this.peers.peerOf(nodeName);
    if (!peer) return false;
    for (const c of this.node.getConnections(peer)) {
      if (c.status !== 'open') continue;
      const comps = c.remoteAddr.getComponents();
      if (comps.some((x) => x.name === 'p2p-circuit')) continue;
      if (comps.some((x) => (x.name === 'ip4' || x.name === 'ip6') && x.value === ip)) return true;
    }
    return false;
  }

  /** A /libp2p/tunnel-proxy/1.0.0 stream whose CONNECT succeeded: one connection (TCP) or flow (UDP). */
  async openStream(t: RemoteTarget, signal: AbortSignal): Promise<Stream> {
    const s = await this.newStream(t, PROXY_PROTOCOL, signal);
    try {
      s.send(lengthPrefixed(encodeProxy({ type: MsgType.CONNECT, protocol: t.protocol, nodeName: t.nodeName, ip: t.ip, port: t.port })));
      const reply = decodeProxy(await readOne(s, signal));
      if (reply.type !== MsgType.SUCCESS) throw new EdgeMeshError('TUNNEL_REFUSED', `node ${t.nodeName} could not connect ${t.protocol} ${t.ip}:${t.port}`);
      this.stats.streamsOut++;
      return s;
    } catch (e) {
      this.stats.dialFailures++;
      s.abort(e as Error);
      throw e;
    }
  }

  /** A new stream of `protocol` (the first of the list the peer speaks) to the node of `t`: on its best open connection, or dialed. */
  private async newStream(t: RemoteTarget, protocol: string | string[], signal: AbortSignal): Promise<Stream> {
    const node = this.node;
    if (!node) throw new EdgeMeshError('TUNNEL_DOWN', 'the tunnel is not running');
    const peer = this.peers.peerOf(t.nodeName);
    if (!peer) {
      this.stats.dialFailures++;
      throw new EdgeMeshError('TUNNEL_NO_PEER', `node ${t.nodeName} has no ${PEER_ID_ANNOTATION} annotation in the catalog; it cannot be reached through the tunnel`);
    }
    const key = peer.toString();
    const room = this.outLimits.check(key);
    if (room !== 'ok') {
      this.streamLimited('outbound', room, key);
      this.stats.dialFailures++;
      throw new EdgeMeshError('TUNNEL_DIAL', `no tunnel stream to node ${t.nodeName}: ${room === 'peer' ? 'tunnelPeerBaseStreamOut' : 'tunnelBaseStreamOut'} reached`);
    }
    if (node.getConnections(peer).length === 0) await node.peerStore.merge(peer, { multiaddrs: this.addressesOf(t.nodeName, peer) });
    try {
      // An open connection is used directly: dialProtocol() goes through the connection manager and the peer
      // store (locks whose queues wake on setTimeout(0), ~1 ms each on Bun) for every stream.
      const conn = bestConnection(node, peer);
      const s = conn
        ? await conn.newStream(protocol, { signal, runOnLimitedConnection: true })
        : await node.dialProtocol(peer, protocol, { signal, runOnLimitedConnection: true });
      this.outLimits.take(key, s); // checked above; a stream that raced past the limit is left uncounted
      return s;
    } catch (e) {
      if (Array.isArray(protocol) && protocol.includes(SESSION_PROTOCOL) && (e as Error).name === 'UnsupportedProtocolError') throw new SessionsUnsupported();
      this.stats.dialFailures++;
      throw new EdgeMeshError('TUNNEL_DIAL', `no tunnel to node ${t.nodeName}: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Where a node's tunnel can be reached: what the catalog says, its relay addresses if it is one, via every relay. */
  private addressesOf(nodeName: string, peer: PeerId): Multiaddr[] {
    return [...this.peers.addressesOf(nodeName), ...this.relays.advertisedBy(nodeName), ...this.relays.circuitsTo(peer)];
  }

  /**
   * After a punch, new streams take the direct connection; the relayed one is closed once its last stream ends
   * (closing it at once would cut proxied connections still running through the relay).
   */
  private retire(relayed: Connection): void {
    const check = (): void => {
      if (relayed.status !== 'open') return;
      this.pool.closeOn(relayed);
      if (relayed.streams.length === 0) {
        relayed.close().catch(() => relayed.abort(new Error('retiring the relayed connection')));
        return;
      }
      setTimeout(check, 5000).unref?.();
    };
    check();
  }

  private pskLog = { windowStart: 0, lines: 0, suppressed: 0 };

  /**
   * A connection failed the PSK check: one count and one log line per connection (at most 20 lines a minute, then
   * a count of the rest: scanners are noisy), worded for this side: a peer refused by us, or our own dial
   * refused by the peer. A connection to ourselves (one of our own addresses came back to us) is no PSK failure.
   */
  private pskFailed(f?: { why: string; remote: string; direction: 'inbound' | 'outbound'; remotePeer: string }): void {
    if (f && f.remotePeer === this.node?.peerId.toString()) {
      this.d.logger.debug('a tunnel connection reached this node itself (one of its own addresses); closed', { remote: f.remote });
      return;
    }
    this.stats.pskFailures++;
    if (!f) return; // pnet cannot tell a wrong key from a broken connection: counted only
    const now = Date.now();
    const w = this.pskLog;
    if (now - w.windowStart >= 60_000) {
      if (w.suppressed) this.d.logger.warn(`${w.suppressed} more tunnel connections failed the PSK check in the last minute (not logged one by one)`);
      Object.assign(w, { windowStart: now, lines: 0, suppressed: 0 });
    }
    if (w.lines >= 20) {
      w.suppressed++;
      return;
    }
    w.lines++;
    const node = this.peers.nodeOfId(f.remotePeer);
    if (f.direction === 'inbound') {
      this.d.logger.warn('refused a tunnel connection that failed the PSK check', { remote: f.remote, peer: f.remotePeer, node: node ?? 'not in the catalog', why: f.why, fix: 'if that is one of our nodes, give it the same psk file as this node' });
    } else {
      this.d.logger.warn('our tunnel connection was refused by the peer: the PSK check failed', { remote: f.remote, peer: f.remotePeer, node: node ?? 'not in the catalog', why: f.why, fix: 'this node and that one hold different psk files: copy the same file to both' });
    }
  }

  /** A stream over a tunnelLimitConfig limit: counted always (limits.ts), logged at most every 10 s. */
  private streamLimited(direction: 'inbound' | 'outbound', why: 'peer' | 'total', peer: string): void {
    if (!this.limitWarning()) return;
    this.d.logger.warn(`${direction === 'inbound' ? 'refused an inbound' : 'did not open an outbound'} tunnel stream: ${why === 'peer' ? `the peer has modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStream${direction === 'inbound' ? 'In' : 'Out'} open` : `tunnelBaseStream${direction === 'inbound' ? 'In' : 'Out'} streams are open in all`}`, { peer, node: this.peers.nodeOfId(peer) ?? '?' });
  }

  /** A relay request involving an unbound peer: counted always, logged at most every 10 s (strangers are noisy). */
  private relayRefused(what: 'reservation' | 'circuit', peer: PeerId): void {
    this.stats.relayRefused++;
    if (!this.relayWarning()) return;
    this.d.logger.warn(`refused a relay ${what} for a peer bound to no node in the catalog`, { peer: peer.toString(), totalRefused: this.stats.relayRefused });
  }

  // ---- status ----

  private facts(): NodeFacts {
    return {
      node: this.node, encryption: this.encryption, isRelay: this.relays.isRelay, sourcePort: this.fixedPort?.port ?? null, puncher: this.puncher,
      admission: this.admission, inLimits: this.inLimits, outLimits: this.outLimits, bindingChanges: this.bindings?.changes ?? 0,
    };
  }

  /** For the agent's module list. */
  status(): { state: 'running' | 'stopped'; detail: string } {
    const node = this.node;
    if (!node) return { state: 'stopped', detail: 'not started' };
    return { state: 'running', detail: `peer ${node.peerId.toString()}, ${node.getConnections().length} peer connection(s), ${this.encryption}` };
  }

  /** Each connected peer (once, by its best connection: direct before relayed) with its path and round trip. */
  describe(): TunnelStatus {
    return this.reporter.describe(this.facts());
  }
}

