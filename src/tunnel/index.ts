/**
 * tunnel/ — EdgeTunnel: the libp2p node that carries proxied connections to endpoints on other nodes.
 *
 *   const tunnel = new TunnelModule({ config, nodeName, catalog, privateKey, psk, logger, metrics });
 *   await tunnel.start();
 *   const pipe = await tunnel.open({ nodeName: 'edge-b', protocol: 'tcp', ip: '10.244.1.7', port: 80 }, handlers, signal);
 *   // `pipe` is now a socket-shaped byte pipe to 10.244.1.7:80, dialed by edge-b's agent (pipe.ts)
 *
 * Stack per connection: TCP on Bun sockets (transport.ts) → TLS 1.3 (tls.ts), the peer authenticated by its key
 * and the PSK proven inside the session (psk-admission.ts) → yamux; or, in the PSK's "stream" form, pnet
 * (XSalsa20; cipher.ts picks libsodium or pure JS) under TLS or Noise (noise.ts). Session streams carry many
 * proxied connections one after another (session.ts). Relayed connections (circuit relay v2) work the same; hole
 * punching (punch.ts) may upgrade them to direct ones.
 *
 * Who is who: a node's peer ID is bound to its node name in the catalog (Node annotation `edgemesh.io/peer-id`,
 * published by each agent in Kubernetes mode, written in the catalog file in standalone mode). The dialer only
 * dials the bound peer ID, and TLS proves the key, so a peer cannot answer for a name it is not bound to. The
 * discovery handshake checks a peer's claimed name against the binding and refuses mismatches.
 *
 * What the receiving side dials: only endpoints that its catalog places on this node (or this node's own
 * addresses, for SOCKS5), and only for peers bound to some node; anything else gets FAILED. The original dials
 * whatever it is asked to (an open proxy into every node's network).
 */
import { identify } from '@libp2p/identify';
import type { Connection, Libp2p, PeerId, PrivateKey, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { ping } from '@libp2p/ping';
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { mdns } from '@libp2p/mdns';
import { yamux } from '@libp2p/yamux';
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr';
import type { Socket } from 'bun';
import { createLibp2p } from 'libp2p';
import { networkInterfaces } from 'node:os';
import type { Catalog } from '../catalog/catalog.ts';
import type { AgentConfig } from '../config/schema-edgemesh.ts';
import { parseHostPort } from '../config/schema.ts';
import { EdgeMeshError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { MetricsRegistry } from '../obs/metrics.ts';
import { type CipherChoice, chooseXSalsa20 } from './cipher.ts';
import type { DatagramChannel } from '../proxy/udp.ts';
import { type Pipe, type PipeHandlers, StreamPipe } from './pipe.ts';
import { pnet } from './pnet.ts';
import { halfWindowUpdates } from './yamux-window.ts';
import { pausedStaysPaused } from './stream-resume.ts';
import { quietEvents } from './quiet-events.ts';
import { quietFrames } from './yamux-frames.ts';
import { directReceive } from './direct-receive.ts';
import {
  DISCOVERY_PROTOCOL, DatagramDeframer, MAX_DATAGRAM, MAX_MESSAGE, MsgType, PROXY_PROTOCOL, decodeDiscovery, decodeProxy, encodeDiscovery,
  encodeProxy, frameDatagram, framedConnect, lengthPrefixed, type MessageSource, type ProxyMsg, readMessage, replyType,
} from './protocol.ts';
import { Splice } from './splice.ts';
import { EARLY_MAX, type FramedEnd, SESSION_PROTOCOL, SESSION_PROTOCOL_EARLY, Session, type SessionHooks } from './session.ts';
import { noiseCrypto, noiseEncrypter } from './noise.ts';
import { bunTls } from './tls.ts';
import { type BunTcpInit, bunTcp, isRelayed } from './transport.ts';
import { HolePuncher } from './punch.ts';
import { FixedPort } from '../net/fixed-port.ts';

export type TunnelConfig = AgentConfig['modules']['edgeTunnel'];

/** Node annotation binding a node name to its tunnel peer ID. */
export const PEER_ID_ANNOTATION = 'edgemesh.io/peer-id';
/** Node annotation listing where a node's tunnel listens (comma-separated multiaddrs); optional. */
export const ADDRESSES_ANNOTATION = 'edgemesh.io/tunnel-addresses';

/** Interface name prefixes never listened on (SPEC §5.1), plus extraFilteredInterfaces. */
const FILTERED_PREFIXES = ['docker', 'edgemesh', 'tunl', 'flannel', 'cni', 'br', 'kube-ipvs'];
/** How long a UDP flow through the tunnel lives without datagrams in either direction. */
const UDP_IDLE_MS = 60_000;
/** An idle session stream is closed by its dialer after this long (by its receiver after twice this long). */
const SESSION_IDLE_MS = 30_000;
/** A session's SUCCESS carries only its type: the dialer knows what it asked for (older dialers decode it too). */
const SESSION_SUCCESS = encodeProxy({ type: MsgType.SUCCESS });
/** Idle session streams kept per peer; more are closed when their connection ends. */
const MAX_IDLE_SESSIONS = 64;

/** The peer does not speak SESSION_PROTOCOL. */
class SessionsUnsupported extends Error {}
const PING_EVERY_MS = 10_000;
const RELAY_CHECK_MS = 5_000;
/** How long a connected relay may go without our reservation on it before the connection is remade. */
const RESERVATION_GRACE_MS = 12_000;

export interface RemoteTarget {
  nodeName: string;
  protocol: 'tcp' | 'udp';
  ip: string;
  port: number;
}

/** What the proxy needs from the tunnel. */
export interface RemoteDialer {
  /**
   * A TCP byte pipe to an endpoint on another node; it delivers nothing until resume(). `early`: the client's
   * first bytes; `sentEarly` on the pipe says how many of them went with the CONNECT (the caller sends the rest).
   */
  open(t: RemoteTarget, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<Pipe & { readonly sentEarly?: number }>;
  /** Datagrams to a UDP endpoint on another node, framed inside one stream (boundaries kept). */
  openDatagrams(t: RemoteTarget, h: { datagram(d: Uint8Array): void; closed(): void }, signal: AbortSignal): Promise<DatagramChannel>;
}

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

export interface PeerStatus {
  node: string;
  peerId: string;
  path: 'direct' | 'relayed';
  relay?: string;
  remoteAddr: string;
  /** The handshake this connection negotiated (/noise or /tls/1.0.0). */
  encryption: string;
  streams: number;
  /** Open connections to this peer (a punched peer keeps its relayed one until that one has no streams). */
  connections: number;
  rttMs?: number;
}

export interface TunnelStatus {
  peerId: string;
  encryption: string;
  listen: string[];
  relay: boolean;
  /** Hole punching: the fixed source port, our address as peers observe it, attempts and successes. */
  punch: { sourcePort: number | null; observed: string[]; attempts: number; successes: number; failures: number };
  peers: PeerStatus[];
}

interface TunnelStats {
  streamsOut: number;
  streamsIn: number;
  /** Proxied connections sent on a session stream that had carried one before. */
  sessionReuses: number;
  refused: number;
  dialFailures: number;
  discoveryRefused: number;
  pskFailures: number;
}

export class TunnelModule implements RemoteDialer {
  private node: Libp2p | null = null;
  private encryption = '';
  /** Idle session streams per peer (session.ts), newest last. */
  private readonly idleSessions = new Map<string, Session[]>();
  /** Peers that do not speak sessions (older edgemesh, the Go original). */
  private readonly noSessions = new Set<string>();
  private sessionSweep: ReturnType<typeof setInterval> | null = null;
  private readonly stats: TunnelStats = { streamsOut: 0, streamsIn: 0, sessionReuses: 0, refused: 0, dialFailures: 0, discoveryRefused: 0, pskFailures: 0 };
  private readonly active = new Set<{ close(): void }>();
  private isRelay = false;
  private readonly rtt = new Map<string, number>();
  private readonly relayDialing = new Set<string>();
  private readonly unreservedSince = new Map<string, number>();
  private readonly reservedOn = new Set<string>();
  private fixedPort: FixedPort | null = null;
  private transportInit: BunTcpInit = {};
  private puncher: HolePuncher | null = null;
  /** The relay list: from the config at start, replaced live by setRelayNodes() when the config file changes. */
  private relayNodes: TunnelConfig['relayNodes'];
  private circuitListens = 0;
  private relayTimer: ReturnType<typeof setInterval> | null = null;
  private pinger: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly d: TunnelDeps) {
    this.relayNodes = d.config.relayNodes;
  }

  get peerId(): string {
    return this.node?.peerId.toString() ?? '';
  }

  async start(): Promise<void> {
    const c = this.d.config;
    const log = this.d.logger;
    if (c.transport !== 'tcp') log.warn(`modules.edgeTunnel.transport: "${c.transport}" is not built; the tunnel uses tcp`);
    const listen = listenAddresses(c);
    // Every outbound connection leaves from one port, so the mapping a relay observes is the one a punch uses.
    this.fixedPort = c.holePunching ? FixedPort.open() : null;
    if (c.holePunching && !this.fixedPort) log.warn('hole punching off: could not reserve a fixed source port through libc (bun:ffi)');
    this.transportInit = { fixedPort: this.fixedPort, connectTimeoutMs: c.handshakeTimeoutMs };
    this.isRelay = c.relayNodes.some((r) => r.nodeName === this.d.nodeName);
    this.circuitListens = this.relayListen().length;
    let protector;
    const nc = noiseCrypto(c.cipher as CipherChoice);
    if (nc.fallbackReason) log.warn('Noise AEAD: using the pure-JS engine (slower)', { reason: nc.fallbackReason });
    // Both handshakes are offered, the configured one first; the peer's choice shows per connection in status.
    // With a PSK, TLS demands the admission proof on connections without pnet, and Noise refuses them.
    const psk = this.d.psk ? { key: this.d.psk, timeoutMs: c.handshakeTimeoutMs, onFailure: (why: string, remote: string) => this.pskFailed(why, remote) } : null;
    const tls = bunTls(psk);
    const nz = noiseEncrypter(nc, psk !== null);
    const encrypters = c.encryption === 'noise' ? [nz, tls] : [tls, nz];
    const offered = `${c.encryption === 'noise' ? `/noise (chacha20-poly1305: ${nc.aead}), /tls/1.0.0` : `/tls/1.0.0, /noise (chacha20-poly1305: ${nc.aead})`}`;
    if (this.d.psk) {
      const chosen = chooseXSalsa20(c.cipher as CipherChoice);
      // Noise has no exporter to bind the proof to: a Noise-first node dials in the stream form.
      const mode = c.encryption === 'noise' ? 'stream' : c.psk.mode;
      if (mode === 'stream' && chosen.fallbackReason) log.warn('PSK cipher: using the pure-JS engine (slower)', { reason: chosen.fallbackReason });
      this.encryption = mode === 'stream'
        ? `pnet/xsalsa20 (${chosen.engine.name}) + ${offered}`
        : `psk admission in TLS + ${offered} (pnet/xsalsa20 (${chosen.engine.name}) accepted inbound)`;
      protector = pnet({ key: this.d.psk, engine: chosen.engine, mode, timeoutMs: c.handshakeTimeoutMs, onFailure: () => this.stats.pskFailures++ });
    } else {
      this.encryption = `${offered} (no PSK: psk.enable is false)`;
    }
    const limits = c.tunnelLimitConfig;
    const maxIn = limits.enable ? limits.tunnelPeerBaseStreamIn : 1 << 20;
    const maxOut = limits.enable ? limits.tunnelPeerBaseStreamOut : 1 << 20;
    const services: Record<string, (components: never) => unknown> = {
      identify: identify({ runOnLimitedConnection: true }) as never,
      ping: ping({ runOnLimitedConnection: true }) as never,
    };
    if (this.isRelay) {
      // Proxied streams live for hours: no per-circuit duration or data limits (the defaults, 2 min and
      // 128 KiB, would cut every real connection), like the original.
      services.relay = circuitRelayServer({ reservations: { maxReservations: 4096, applyDefaultLimit: false } }) as never;
    }
    if (!pausedStaysPaused()) log.warn('stream resume: this @libp2p/utils version is not the one stream-resume.ts was written for; a reader that pauses while catching up can have its stream aborted (StreamBufferError)');
    if (!halfWindowUpdates()) log.warn('yamux window updates: this @libp2p/yamux version is not the one yamux-window.ts was written for; every data frame gets its own update');
    if (!quietEvents()) log.warn('libp2p events: this main-event version is not the one quiet-events.ts was written for; every stream write builds events nobody listens to');
    const framesChanged = (): void => log.warn('yamux frames: this @libp2p/yamux version is not the one yamux-frames.ts was written for; every frame builds its trace description');
    if (!quietFrames(framesChanged)) framesChanged();
    if (!directReceive()) log.warn('stream reads: this @libp2p/utils version is not the one direct-receive.ts was written for; session bytes go through message events');
    try {
      this.node = await createLibp2p({
        privateKey: this.d.privateKey,
        // A relay announces the addresses it is configured with (its public ones), as the original does.
        addresses: { listen: [...listen, ...this.relayListen()], appendAnnounce: this.ownAdvertised() },
        transports: [bunTcp(this.transportInit), circuitRelayTransport({ reservationCompletionTimeout: c.handshakeTimeoutMs, reservationConcurrency: Math.max(1, c.relayNodes.length) })],
        connectionProtector: protector,
        connectionEncrypters: encrypters as never,
        streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 4 * 1024 * 1024 } } as never)],
        peerDiscovery: c.mdns ? [mdns({ serviceTag: c.rendezvous })] : [],
        connectionManager: { maxConnections: 400, inboundUpgradeTimeout: c.handshakeTimeoutMs },
        services: services as never,
        // Started below, once every handler and listener is in place (identify results arrive at once).
        start: false,
      });
    } catch (e) {
      throw startError(e);
    }
    const node = this.node;
    skipRepeatedProtocolMerges(node);
    await node.handle(PROXY_PROTOCOL, (s, conn) => this.onProxy(s, conn), { runOnLimitedConnection: true, maxInboundStreams: maxIn, maxOutboundStreams: maxOut });
    await node.handle([SESSION_PROTOCOL_EARLY, SESSION_PROTOCOL], (s, conn) => this.onSession(s, conn), { runOnLimitedConnection: true, maxInboundStreams: maxIn, maxOutboundStreams: maxOut });
    await node.handle(DISCOVERY_PROTOCOL, (s, conn) => this.onDiscovery(s, conn), { runOnLimitedConnection: true });
    node.addEventListener('peer:discovery', (evt) => {
      const id = evt.detail.id;
      if (node.getConnections(id).length === 0) this.discover(id, 'MDNS').catch(() => {});
    });
    node.addEventListener('connection:open', (evt) => {
      if (evt.detail.direction === 'outbound') this.discover(evt.detail.remotePeer, 'DHT').catch(() => {});
    });
    if (this.fixedPort) {
      this.puncher = new HolePuncher({
        node, transport: this.transportInit, log: log.child('punch'), timeoutMs: c.handshakeTimeoutMs,
        onPunched: (peer, relayed, ms) => {
          log.info('hole punched: direct connection', { node: this.nodeOf(peer) ?? '?', peer: peer.toString(), ms: Math.round(ms) });
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
    this.registerMetrics();
    log.info('tunnel started', { peerId: node.peerId.toString(), encryption: this.encryption, listen: node.getMultiaddrs().map(String), relay: this.isRelay });
    this.connectRelays();
    this.relayTimer = setInterval(() => this.connectRelays(), RELAY_CHECK_MS);
    // Reservations show up as circuit listen addresses; note them as they come (and check the relays again).
    node.addEventListener('self:peer:update', () => this.connectRelays());
    this.relayTimer.unref?.();
    this.pinger = setInterval(() => void this.pingPeers(), PING_EVERY_MS);
    this.pinger.unref?.();
    node.addEventListener('peer:connect', (evt) => void this.pingPeer(evt.detail));
  }

  async stop(): Promise<void> {
    if (this.pinger) clearInterval(this.pinger);
    if (this.relayTimer) clearInterval(this.relayTimer);
    if (this.sessionSweep) clearInterval(this.sessionSweep);
    for (const pool of this.idleSessions.values()) for (const x of pool) x.close();
    this.idleSessions.clear();
    this.fixedPort?.close();
    this.fixedPort = null;
    for (const a of [...this.active]) a.close();
    const node = this.node;
    this.node = null;
    if (node) await node.stop();
  }

  // ---- who is who ----

  /**
   * Parsed peer IDs by node, kept while the annotation is unchanged: parsing (base58 and multihash decoding) and
   * printing a fresh PeerId cost ~4% of the CPU of a proxied connection through the tunnel, once per connection.
   */
  private readonly peerIds = new Map<string, { id: string; peer: PeerId | null }>();

  /** The peer ID the catalog binds to `nodeName`, or null. */
  peerOf(nodeName: string): PeerId | null {
    const id = this.d.catalog.snapshot().nodes.get(nodeName)?.annotations[PEER_ID_ANNOTATION];
    if (!id) {
      this.peerIds.delete(nodeName);
      return null;
    }
    const cached = this.peerIds.get(nodeName);
    if (cached?.id === id) return cached.peer;
    let peer: PeerId | null;
    try {
      peer = peerIdFromString(id);
    } catch {
      peer = null;
    }
    this.peerIds.set(nodeName, { id, peer });
    return peer;
  }

  /** The node name bound to a peer ID, or null (an index rebuilt once per catalog version). */
  nodeOf(peer: PeerId): string | null {
    const snap = this.d.catalog.snapshot();
    if (this.peerIndex?.version !== snap.version) {
      const names = new Map<string, string>();
      for (const n of snap.nodes.values()) {
        const id = n.annotations[PEER_ID_ANNOTATION];
        if (id) names.set(id, n.name);
      }
      this.peerIndex = { version: snap.version, names };
    }
    return this.peerIndex.names.get(peer.toString()) ?? null;
  }

  private peerIndex: { version: number; names: Map<string, string> } | null = null;

  /** Where a node's tunnel can be reached: its annotation, its node addresses at our port, via every relay. */
  private addressesOf(nodeName: string, peer: PeerId): Multiaddr[] {
    const out: Multiaddr[] = [];
    const n = this.d.catalog.snapshot().nodes.get(nodeName);
    const ann = n?.annotations[ADDRESSES_ANNOTATION];
    if (ann) for (const a of ann.split(',')) tryPush(out, a.trim());
    const relay = this.relayNodes.find((r) => r.nodeName === nodeName);
    if (relay) for (const a of relay.advertiseAddress) tryPush(out, toMultiaddr(a, this.d.config.listenPort));
    if (!ann && n) for (const a of n.addresses) if (a.type === 'InternalIP' || a.type === 'ExternalIP') tryPush(out, toMultiaddr(a.address, this.d.config.listenPort));
    for (const r of this.relays()) {
      if (r.peer.equals(peer)) continue;
      for (const a of r.addrs) tryPush(out, circuitVia(a, r.peer));
    }
    return out;
  }

  private relays(): { name: string; peer: PeerId; addrs: Multiaddr[] }[] {
    const out = [];
    for (const r of this.relayNodes) {
      if (r.nodeName === this.d.nodeName) continue;
      const peer = this.peerOf(r.nodeName);
      if (!peer) continue;
      const addrs: Multiaddr[] = [];
      for (const a of r.advertiseAddress) tryPush(addrs, toMultiaddr(a, this.d.config.listenPort));
      out.push({ name: r.nodeName, peer, addrs });
    }
    return out;
  }

  /**
   * One `/p2p-circuit` listen address per configured relay: the relay transport then holds a reservation on each
   * connected relay, so a relay that dies leaves the others already reserved (HA without waiting for a heartbeat).
   * Reservations are renewed by the transport before they expire.
   */
  private relayListen(): string[] {
    return this.relays().map(() => '/p2p-circuit');
  }

  /**
   * The relay list changed in the config file (the original's watcher does the same): connect to the new relays
   * and hold a reservation on each. Becoming or ceasing to be a relay server takes a restart, as in the original.
   */
  async setRelayNodes(list: TunnelConfig['relayNodes']): Promise<void> {
    const was = this.relayNodes.map((r) => r.nodeName).sort().join(',');
    this.relayNodes = list;
    const now = list.map((r) => r.nodeName).sort().join(',');
    this.d.logger.info('relay list reloaded', { from: was || 'none', to: now || 'none' });
    if (list.some((r) => r.nodeName === this.d.nodeName) !== this.isRelay) {
      this.d.logger.warn(`this node ${this.isRelay ? 'left' : 'joined'} the relay list; restart the agent to ${this.isRelay ? 'stop' : 'start'} serving as a relay`);
    }
    const want = this.relayListen().length;
    const node = this.node;
    if (node && want > this.circuitListens) {
      // libp2p has no public call to add listen addresses to a running node; its transport manager does.
      const tm = (node as unknown as { components: { transportManager: { listen(a: Multiaddr[]): Promise<void> } } }).components.transportManager;
      const extra = Array.from({ length: want - this.circuitListens }, () => multiaddr('/p2p-circuit'));
      this.circuitListens = want;
      await tm.listen(extra).catch((e: Error) => this.d.logger.warn('could not add a relay reservation', { error: e.message }));
    }
    this.connectRelays();
  }

  private ownAdvertised(): string[] {
    const me = this.relayNodes.find((r) => r.nodeName === this.d.nodeName);
    return (me?.advertiseAddress ?? []).map((a) => toMultiaddr(a, this.d.config.listenPort));
  }

  /** Connect to every relay that is not connected: at start and every RELAY_CHECK_MS (the original: 120 s). */
  private connectRelays(): void {
    const node = this.node;
    if (!node) return;
    const listening = node.getMultiaddrs().map(String);
    for (const r of this.relays()) {
      if (node.getConnections(r.peer).length > 0) {
        // Connected but holding no reservation there for a while (a reservation attempt failed and the relay
        // transport does not retry on a live connection): reconnect, which makes it try again.
        const reserved = listening.some((a) => a.includes(`/p2p/${r.peer.toString()}/p2p-circuit`));
        if (reserved !== this.reservedOn.has(r.name)) {
          if (reserved) this.reservedOn.add(r.name);
          else this.reservedOn.delete(r.name);
          this.d.logger.info(reserved ? 'holding a reservation on relay' : 'lost the reservation on relay', { relay: r.name });
        }
        if (reserved) this.unreservedSince.delete(r.name);
        else if (!this.unreservedSince.has(r.name)) this.unreservedSince.set(r.name, performance.now());
        else if (performance.now() - this.unreservedSince.get(r.name)! > RESERVATION_GRACE_MS) {
          // Connected, but the relay transport made no reservation there (its discovery skips a relay after some
          // failures for good): ask for one explicitly by listening on this relay's circuit address.
          this.unreservedSince.set(r.name, performance.now());
          this.d.logger.warn('no reservation on a connected relay; requesting one', { relay: r.name });
          const tm = (node as unknown as { components: { transportManager: { listen(a: Multiaddr[]): Promise<void> } } }).components.transportManager;
          tm.listen(r.addrs.map((a) => multiaddr(circuitVia(a, r.peer)))).catch((e: Error) => {
            this.d.logger.warn('reservation request failed; reconnecting to the relay', { relay: r.name, error: e.message });
            for (const c of node.getConnections(r.peer)) c.close().catch(() => c.abort(new Error('reconnecting to the relay')));
          });
        }
        continue;
      }
      if (this.relayDialing.has(r.name)) continue;
      this.relayDialing.add(r.name);
      node.dial(r.addrs.map((a) => a.encapsulate(`/p2p/${r.peer.toString()}`)), { signal: AbortSignal.timeout(this.d.config.handshakeTimeoutMs) })
        .then(() => this.d.logger.info('connected to relay', { relay: r.name }))
        .catch((e: Error) => this.d.logger.warn('relay not reachable', { relay: r.name, error: e.message }))
        .finally(() => this.relayDialing.delete(r.name));
    }
  }

  // ---- discovery handshake ----

  private async discover(peer: PeerId, how: 'MDNS' | 'DHT'): Promise<void> {
    const node = this.node;
    if (!node) return;
    const signal = AbortSignal.timeout(this.d.config.handshakeTimeoutMs);
    const s = await node.dialProtocol(peer, DISCOVERY_PROTOCOL, { signal, runOnLimitedConnection: true });
    try {
      s.send(lengthPrefixed(encodeDiscovery({ type: MsgType.CONNECT, protocol: how, nodeName: this.d.nodeName })));
      const reply = decodeDiscovery(await readOne(s, signal));
      if (reply.type !== MsgType.SUCCESS) {
        this.d.logger.warn('peer refused our discovery handshake', { peer: peer.toString() });
      } else if (!this.claimMatches(reply.nodeName, peer)) {
        this.stats.discoveryRefused++;
        this.d.logger.warn('peer claims a node name that the catalog binds to another peer; ignored', { peer: peer.toString(), claimed: reply.nodeName });
      }
    } finally {
      s.abort(new Error('discovery done')); // the original resets the stream after the handshake
    }
  }

  private claimMatches(nodeName: string, peer: PeerId): boolean {
    const bound = this.peerOf(nodeName);
    return bound !== null && bound.equals(peer);
  }

  private async onDiscovery(s: Stream, conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.d.config.handshakeTimeoutMs);
    try {
      const req = decodeDiscovery(await readOne(s, signal));
      if (req.type !== MsgType.CONNECT) throw new Error('not a CONNECT');
      if (!this.claimMatches(req.nodeName, conn.remotePeer)) {
        this.stats.discoveryRefused++;
        this.d.logger.warn('refused a peer claiming a node name it is not bound to', {
          peer: conn.remotePeer.toString(), claimed: req.nodeName, bound: this.peerOf(req.nodeName)?.toString() ?? 'none',
        });
        s.send(lengthPrefixed(encodeDiscovery({ type: MsgType.FAILED, protocol: req.protocol, nodeName: this.d.nodeName })));
        await s.close({ signal }).catch(() => {});
        await conn.close().catch(() => {});
        return;
      }
      s.send(lengthPrefixed(encodeDiscovery({ type: MsgType.SUCCESS, protocol: req.protocol, nodeName: this.d.nodeName })));
      await s.close({ signal }).catch(() => {});
    } catch (e) {
      s.abort(e as Error);
    }
  }

  // ---- proxy protocol, sending side ----

  /** Session streams can carry a connection's first bytes with its CONNECT (the proxy waits a moment for them). */
  get takesEarly(): boolean {
    return this.d.config.sessions;
  }

  async open(t: RemoteTarget, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<Pipe & { readonly sentEarly?: number }> {
    if (t.protocol === 'tcp' && this.d.config.sessions) {
      const peer = this.peerOf(t.nodeName);
      if (peer && !this.noSessions.has(peer.toString())) {
        try {
          return await this.openSession(t, peer, h, signal, early);
        } catch (e) {
          if (!(e instanceof SessionsUnsupported)) throw e;
          // An older edgemesh or the Go original: one stream per connection, as before.
          this.noSessions.add(peer.toString());
        }
      }
    }
    const stream = await this.openStream(t, signal);
    stream.pause(); // the caller resumes once it has paired the pipe with its client
    return new StreamPipe(stream, h);
  }

  async openDatagrams(t: RemoteTarget, h: { datagram(d: Uint8Array): void; closed(): void }, signal: AbortSignal): Promise<DatagramChannel> {
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
        if (stream.writeStatus === 'writable' && stream.writeBufferLength < 1024 * 1024 && d.length <= MAX_DATAGRAM) stream.send(frameDatagram(d));
      },
      close: () => {
        stream.close().catch(() => stream.abort(new Error('closing')));
      },
    };
  }

  /** A new stream of `protocol` (the first of the list the peer speaks) to the node of `t`: on its best open connection, or dialed. */
  private async newStream(t: RemoteTarget, protocol: string | string[], signal: AbortSignal): Promise<Stream> {
    const node = this.node;
    if (!node) throw new EdgeMeshError('TUNNEL_DOWN', 'the tunnel is not running');
    const peer = this.peerOf(t.nodeName);
    if (!peer) {
      this.stats.dialFailures++;
      throw new EdgeMeshError('TUNNEL_NO_PEER', `node ${t.nodeName} has no ${PEER_ID_ANNOTATION} annotation in the catalog; it cannot be reached through the tunnel`);
    }
    if (node.getConnections(peer).length === 0) await node.peerStore.merge(peer, { multiaddrs: this.addressesOf(t.nodeName, peer) });
    try {
      // An open connection is used directly: dialProtocol() goes through the connection manager and the peer
      // store (locks whose queues wake on setTimeout(0), ~1 ms each on Bun) for every stream.
      const conn = this.bestConnection(peer);
      return conn
        ? await conn.newStream(protocol, { signal, runOnLimitedConnection: true })
        : await node.dialProtocol(peer, protocol, { signal, runOnLimitedConnection: true });
    } catch (e) {
      if (Array.isArray(protocol) && protocol.includes(SESSION_PROTOCOL) && (e as Error).name === 'UnsupportedProtocolError') throw new SessionsUnsupported();
      this.stats.dialFailures++;
      throw new EdgeMeshError('TUNNEL_DIAL', `no tunnel to node ${t.nodeName}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * A TCP connection on a session stream (session.ts): an idle one to that peer when there is one, else a new
   * one. A pooled session that died while idle (its peer restarted, say) is replaced once.
   */
  private async openSession(t: RemoteTarget, peer: PeerId, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<FramedEnd> {
    const peerKey = peer.toString();
    for (let attempt = 0; ; attempt++) {
      const pooled = attempt === 0 ? this.takeSession(peer) : null;
      const s = pooled ?? new Session(await this.newStream(t, [SESSION_PROTOCOL_EARLY, SESSION_PROTOCOL], signal), this.dialerHooks(peerKey), 'idle');
      // 1.1 streams carry the first bytes with the CONNECT; on 1.0 the caller sends them once connected.
      const first = s.early && early?.length ? early.subarray(0, EARLY_MAX) : undefined;
      let end: FramedEnd | null;
      try {
        // The signal is checked when the reply comes, not listened to: an abort listener per connection cost ~2%
        // of the dialing agent's CPU. A caller that gave up has moved on (the proxy ignores a late pipe); the
        // reply always comes (the receiver answers FAILED once its connect attempts run out) or the stream dies.
        end = await new Promise((resolve, reject) => {
          s.waiting = { h, resolve, reject };
          s.phase = 'handshake';
          s.stream.send(framedConnect(this.connectFields(t), first));
        });
        if (signal.aborted) {
          s.kill(new Error('the proxied connection gave up'));
          throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
        }
      } catch (e) {
        if (pooled && !signal.aborted) continue;
        this.stats.dialFailures++;
        throw new EdgeMeshError('TUNNEL_DIAL', `no tunnel to node ${t.nodeName}: ${(e as Error).message}`, { cause: e });
      }
      if (!end) {
        this.stats.dialFailures++;
        throw new EdgeMeshError('TUNNEL_REFUSED', `node ${t.nodeName} could not connect ${t.protocol} ${t.ip}:${t.port}`);
      }
      this.stats.streamsOut++;
      end.sentEarly = first?.length ?? 0;
      return end;
    }
  }

  /** Encoded once per endpoint: the CONNECT's fields are the same for every connection to it. */
  private readonly connectCache = new Map<string, Uint8Array>();

  private connectFields(t: RemoteTarget): Uint8Array {
    const key = `${t.nodeName}|${t.ip}|${t.port}`;
    let f = this.connectCache.get(key);
    if (!f) {
      if (this.connectCache.size >= 4096) this.connectCache.clear(); // endpoints come and go: stay bounded
      f = encodeProxy({ type: MsgType.CONNECT, protocol: 'tcp', nodeName: t.nodeName, ip: t.ip, port: t.port });
      this.connectCache.set(key, f);
    }
    return f;
  }

  private dialerHooks(peerKey: string): SessionHooks {
    return {
      message: (s, msg) => {
        const w = s.waiting;
        s.waiting = null;
        if (!w) throw new Error('a reply nobody asked for');
        if (replyType(msg) === MsgType.SUCCESS) {
          // Attached before the rest of this read is parsed: the endpoint may speak first.
          w.resolve(s.attach(w.h, true));
        } else {
          s.release();
          w.resolve(null);
        }
      },
      released: (s) => {
        s.phase = 'idle';
        const pool = this.idleSessions.get(peerKey) ?? [];
        if (pool.length >= MAX_IDLE_SESSIONS || s.dead) {
          s.close();
          return;
        }
        pool.push(s);
        this.idleSessions.set(peerKey, pool);
        this.sessionSweep ??= setInterval(() => this.sweepSessions(), SESSION_IDLE_MS / 2);
        this.sessionSweep.unref?.();
      },
      gone: (s) => {
        s.waiting?.reject(new Error('the session stream closed'));
        s.waiting = null;
        const pool = this.idleSessions.get(peerKey);
        const i = pool?.indexOf(s) ?? -1;
        if (i >= 0) pool!.splice(i, 1);
      },
    };
  }

  /**
   * An idle session on the connection new streams would take now: after a punch that is the direct one, so
   * sessions left on the relayed connection are closed instead of reused (and stop holding it open).
   */
  private takeSession(peer: PeerId): Session | null {
    const pool = this.idleSessions.get(peer.toString());
    if (!pool?.length) return null;
    const best = this.bestConnection(peer);
    while (pool.length) {
      const s = pool.pop()!;
      const onBest = best !== undefined && best.streams.includes(s.stream);
      if (!s.dead && onBest && s.stream.status === 'open' && s.stream.writeStatus === 'writable') {
        this.stats.sessionReuses++;
        return s;
      }
      s.close();
    }
    return null;
  }

  /** Idle sessions older than SESSION_IDLE_MS are closed (the receiver closes them after twice that). */
  private sweepSessions(): void {
    const old = Date.now() - SESSION_IDLE_MS;
    for (const [key, pool] of this.idleSessions) {
      for (const s of pool.filter((x) => x.lastUsed < old)) s.close();
      const live = pool.filter((x) => !x.dead);
      if (live.length) this.idleSessions.set(key, live);
      else this.idleSessions.delete(key);
    }
  }

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

  /**
   * After a punch, new streams take the direct connection; the relayed one is closed once its last stream ends
   * (closing it at once would cut proxied connections still running through the relay).
   */
  private retire(relayed: Connection): void {
    const check = (): void => {
      if (relayed.status !== 'open') return;
      for (const pool of this.idleSessions.values()) for (const x of pool) if (relayed.streams.includes(x.stream)) x.close();
      if (relayed.streams.length === 0) {
        relayed.close().catch(() => relayed.abort(new Error('retiring the relayed connection')));
        return;
      }
      setTimeout(check, 5000).unref?.();
    };
    check();
  }

  /**
   * Whether an endpoint on another node can skip the tunnel: a hostNetwork endpoint whose IP is the address of a
   * direct, authenticated connection to that very node (TLS/Noise proved the node's key at that IP). Subnet
   * matching alone is not enough: two edge LANs often use the same private range.
   */
  reachesDirectly(nodeName: string, ip: string): boolean {
    if (!this.d.config.directHostEndpoints || !this.node) return false;
    const peer = this.peerOf(nodeName);
    if (!peer) return false;
    for (const c of this.node.getConnections(peer)) {
      if (c.status !== 'open') continue;
      const comps = c.remoteAddr.getComponents();
      if (comps.some((x) => x.name === 'p2p-circuit')) continue;
      if (comps.some((x) => (x.name === 'ip4' || x.name === 'ip6') && x.value === ip)) return true;
    }
    return false;
  }

  /** A direct connection when there is one, else a relayed one, else none. */
  private bestConnection(peer: PeerId): Connection | undefined {
    let relayed: Connection | undefined;
    for (const c of this.node?.getConnections(peer) ?? []) {
      if (c.status !== 'open') continue;
      if (!isRelayed(c)) return c;
      relayed ??= c;
    }
    return relayed;
  }

  // ---- proxy protocol, receiving side ----

  /** Why a CONNECT must be refused, or null when it names an endpoint this node may dial. */
  private refusal(from: PeerId, protocol: string, ip: string, port: number): string | null {
    if (protocol !== 'tcp' && protocol !== 'udp') return `unknown protocol ${JSON.stringify(protocol)}`;
    if (!(port > 0 && port < 65536)) return `bad port ${port}`;
    if (this.nodeOf(from) === null) return 'the requesting peer is not bound to any node in the catalog';
    const snap = this.d.catalog.snapshot();
    if (this.localEndpoints(snap).has(`${ip}|${port}|${protocol === 'tcp' ? 'TCP' : 'UDP'}`)) return null;
    // SOCKS5 reaches a node itself (e.g. ssh): any port on this node's own addresses.
    const self = snap.nodes.get(this.d.nodeName);
    if (protocol === 'tcp' && self?.addresses.some((a) => a.address === ip)) return null;
    return `${protocol} ${ip}:${port} is not an endpoint on node ${this.d.nodeName}`;
  }

  /** ip|port|PROTO of every endpoint the catalog places on this node; rebuilt once per catalog version. */
  private localIndex: { version: number; keys: Set<string> } | null = null;

  private localEndpoints(snap: ReturnType<Catalog['snapshot']>): Set<string> {
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

  /** The receiving end of a session stream: CONNECT after CONNECT, each checked like the proxy protocol's. */
  private onSession(stream: Stream, conn: Connection): void {
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
        s.phase = 'handshake';
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
      s.phase = 'handshake';
      s.sendMessage(encodeProxy({ type: MsgType.FAILED }));
      arm();
    };
    const why = req.protocol === 'udp' ? 'UDP goes through /libp2p/tunnel-proxy/1.0.0, not sessions' : this.refusal(conn.remotePeer, req.protocol, req.ip, req.port);
    if (why) return fail(why);
    const splice = this.newSplice();
    const socket = await connectWithRetry(req.ip, req.port, 3, 5000, splice);
    if (typeof socket === 'string') {
      splice.close(true);
      return fail(`connect failed: ${socket}`);
    }
    if (s.dead) {
      socket.terminate();
      return;
    }
    this.stats.streamsIn++;
    s.sendMessage(SESSION_SUCCESS);
    this.spliceTcp(splice, socket, (h) => s.attach(h, false));
    // The connection's first bytes came with its CONNECT (1.1): they go first, with the splice's backpressure.
    if (req.early) splice.data(1, req.early.slice());
  }

  private async onProxy(s: Stream, conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.d.config.handshakeTimeoutMs);
    let req;
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
    const splice = this.newSplice();
    const socket = await connectWithRetry(req.ip, req.port, 3, 5000, splice);
    if (typeof socket === 'string') {
      splice.close(true);
      return fail(`connect failed: ${socket}`);
    }
    this.stats.streamsIn++;
    s.send(lengthPrefixed(success));
    this.spliceTcp(splice, socket, (h) => new StreamPipe(s, h));
  }

  /** A splice for an endpoint connection, closed with the module (stop()). */
  private newSplice(): Splice {
    const entry = { close: () => splice.close(true) };
    const splice = new Splice(() => this.active.delete(entry));
    this.active.add(entry);
    return splice;
  }

  /**
   * Join an endpoint socket (already feeding `splice` since it opened: what it sent or ended before now is held
   * there) with the tunnel end of its connection (a stream, or a session's FramedEnd).
   */
  private spliceTcp(splice: Splice, socket: Socket<Splice | null>, tunnelEnd: (h: PipeHandlers) => Pipe): void {
    splice.set(0, socket);
    splice.set(1, tunnelEnd({
      data: (d) => splice.data(1, d),
      drain: () => splice.drain(1),
      end: () => splice.end(1),
      close: (reset) => splice.close(reset),
    }));
  }

  private lastPskWarning = 0;

  /** A peer failed the PSK's admission proof: counted always, logged at most every 10 s (scanners are noisy). */
  private pskFailed(why: string, remote: string): void {
    this.stats.pskFailures++;
    const now = Date.now();
    if (now - this.lastPskWarning < 10_000) return;
    this.lastPskWarning = now;
    this.d.logger.warn('refused a tunnel connection that failed the PSK check: check that both nodes use the same psk file', { remote, why, totalFailures: this.stats.pskFailures });
  }

  /** Count and log a refused CONNECT (either protocol). */
  private logRefusal(conn: Connection, req: ProxyMsg, reason: string): void {
    this.stats.refused++;
    this.d.logger.warn('refused a tunnel CONNECT', { peer: conn.remotePeer.toString(), node: this.nodeOf(conn.remotePeer) ?? '?', target: `${req.protocol} ${req.ip}:${req.port}`, reason });
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
            if (buf.length <= MAX_DATAGRAM) stream.send(frameDatagram(buf));
          },
        },
      });
    } catch (e) {
      return fail(`udp socket: ${(e as Error).message}`);
    }
    this.stats.streamsIn++;
    this.active.add(entry);
    stream.send(lengthPrefixed(success));
    const deframer = new DatagramDeframer();
    stream.addEventListener('message', (evt) => {
      touch();
      const d = evt.data;
      for (const c of d instanceof Uint8Array ? [d] : d) deframer.push(c, (dg) => sock!.send(dg));
    });
    stream.addEventListener('remoteCloseWrite', finish);
    stream.addEventListener('close', finish);
    touch();
  }

  // ---- status and metrics ----

  /** For the agent's module list. */
  status(): { state: 'running' | 'stopped'; detail: string } {
    const node = this.node;
    if (!node) return { state: 'stopped', detail: 'not started' };
    return { state: 'running', detail: `peer ${node.peerId.toString()}, ${node.getConnections().length} peer connection(s), ${this.encryption}` };
  }

  /** Each connected peer (once, by its best connection: direct before relayed) with its path and round trip. */
  describe(): TunnelStatus {
    const node = this.node;
    const punch = { sourcePort: this.fixedPort?.port ?? null, observed: this.puncher?.addresses() ?? [], ...(this.puncher?.stats ?? { attempts: 0, successes: 0, failures: 0 }) };
    if (!node) return { peerId: '', encryption: this.encryption, listen: [], relay: this.isRelay, punch, peers: [] };
    const peers: PeerStatus[] = [];
    for (const peer of node.getPeers()) {
      const conns = node.getConnections(peer).filter((c) => c.status === 'open');
      const best = this.bestConnection(peer) ?? conns[0];
      if (!best) continue;
      const addr = best.remoteAddr.toString();
      const relayed = isRelayed(best);
      const relayId = relayed ? /\/p2p\/([^/]+)\/p2p-circuit/.exec(addr)?.[1] : undefined;
      let relay: string | undefined;
      if (relayId) {
        try {
          relay = this.nodeOf(peerIdFromString(relayId)) ?? relayId;
        } catch {
          relay = relayId;
        }
      }
      peers.push({
        node: this.nodeOf(peer) ?? '?', peerId: peer.toString(), path: relayed ? 'relayed' : 'direct', relay, remoteAddr: addr,
        encryption: best.encryption ?? '', streams: conns.reduce((n, c) => n + c.streams.length, 0), connections: conns.length, rttMs: this.rtt.get(peer.toString()),
      });
    }
    return { peerId: node.peerId.toString(), encryption: this.encryption, listen: node.getMultiaddrs().map(String), relay: this.isRelay, punch, peers };
  }

  /** Round trips to every connected peer, kept for status (the ping also keeps idle NAT mappings alive). */
  private async pingPeers(): Promise<void> {
    const node = this.node;
    if (!node) return;
    const peers = node.getPeers();
    const seen = new Set(peers.map(String));
    for (const k of this.rtt.keys()) if (!seen.has(k)) this.rtt.delete(k);
    await Promise.all(peers.map((p) => this.pingPeer(p)));
  }

  private async pingPeer(p: PeerId): Promise<void> {
    const svc = (this.node?.services as { ping?: { ping(p: PeerId, o: { signal: AbortSignal }): Promise<number> } } | undefined)?.ping;
    if (!svc) return;
    try {
      this.rtt.set(p.toString(), await svc.ping(p, { signal: AbortSignal.timeout(5000) }));
    } catch {
      this.rtt.delete(p.toString());
    }
  }

  private registerMetrics(): void {
    const m = this.d.metrics;
    if (!m) return;
    const st = this.stats;
    m.counterFrom('edgemesh_tunnel_streams_out_total', 'Proxied connections sent through the tunnel').set(() => st.streamsOut);
    m.counterFrom('edgemesh_tunnel_streams_in_total', 'Proxied connections received through the tunnel and dialed here').set(() => st.streamsIn);
    m.counterFrom('edgemesh_tunnel_session_reuses_total', 'Proxied connections sent on an already open session stream').set(() => st.sessionReuses);
    m.counterFrom('edgemesh_tunnel_refused_total', 'Tunnel CONNECTs refused (not a local endpoint, unbound peer, dial failed)').set(() => st.refused);
    m.counterFrom('edgemesh_tunnel_dial_failures_total', 'Tunnel streams that could not be opened to another node').set(() => st.dialFailures);
    m.counterFrom('edgemesh_tunnel_discovery_refused_total', 'Peers refused for claiming a node name bound to another peer').set(() => st.discoveryRefused);
    m.counterFrom('edgemesh_tunnel_psk_failures_total', 'Connections that failed the private-network (PSK) handshake').set(() => st.pskFailures);
    m.counterFrom('edgemesh_tunnel_punch_attempts_total', 'Hole-punching attempts (DCUtR)').set(() => this.puncher?.stats.attempts ?? 0);
    m.counterFrom('edgemesh_tunnel_punch_successes_total', 'Hole punches that produced a direct connection').set(() => this.puncher?.stats.successes ?? 0);
    m.gauge('edgemesh_tunnel_connections', 'Open peer connections, by path').set(() => this.node?.getConnections().filter((c) => !isRelayed(c)).length ?? 0, { path: 'direct' });
    m.gauge('edgemesh_tunnel_connections', 'Open peer connections, by path').set(() => this.node?.getConnections().filter(isRelayed).length ?? 0, { path: 'relayed' });
  }
}

/**
 * libp2p records "this peer speaks protocol P" in the peer store on every stream it opens or accepts (a locked
 * read-compare-write, ~0.2 ms of CPU on each side per stream here). The answer never changes for a connected
 * peer, so after the first time per peer and protocol the call is answered at once. Everything else passes.
 */
function skipRepeatedProtocolMerges(node: Libp2p): void {
  const store = node.peerStore as unknown as { merge: (peer: PeerId, data: Record<string, unknown>, options?: unknown) => Promise<unknown> };
  const merge = store.merge.bind(store);
  const known = new Set<string>();
  node.addEventListener('peer:disconnect', (evt) => {
    const prefix = `${evt.detail.toString()} `;
    for (const k of known) if (k.startsWith(prefix)) known.delete(k);
  });
  store.merge = (peer, data, options) => {
    const keys = Object.keys(data);
    const protocols = data.protocols;
    if (keys.length === 1 && Array.isArray(protocols) && protocols.length === 1) {
      const k = `${peer.toString()} ${String(protocols[0])}`;
      if (known.has(k)) return Promise.resolve(undefined);
      return merge(peer, data, options).then((r) => {
        known.add(k);
        return r;
      });
    }
    return merge(peer, data, options);
  };
}

/** One length-prefixed protocol message (discovery or proxy) from a stream. */
function readOne(s: Stream, signal: AbortSignal): Promise<Uint8Array> {
  return readMessage(s as unknown as MessageSource, MAX_MESSAGE, signal);
}

function startError(e: unknown): EdgeMeshError {
  return new EdgeMeshError('TUNNEL_START', `the tunnel could not start: ${(e as Error).message}; check modules.edgeTunnel.listenPort and listenInterfaces`, { cause: e });
}

/** The address of a peer reached through `relay` at `relayAddr`. */
function circuitVia(relayAddr: Multiaddr, relay: PeerId): string {
  return `${relayAddr.toString()}/p2p/${relay.toString()}/p2p-circuit`;
}

function tryPush(out: Multiaddr[], a: string): void {
  try {
    out.push(multiaddr(a));
  } catch {
    // a bad annotation or address costs that address only
  }
}

/** IP → /ip4/IP/tcp/port; IP:port → /ip4/IP/tcp/port; a multiaddr as is. */
export function toMultiaddr(a: string, port: number): string {
  if (a.startsWith('/')) return a;
  const hp = parseHostPort(a);
  const host = hp?.host ?? a;
  const p = hp?.port ?? port;
  return `/${host.includes(':') ? 'ip6' : 'ip4'}/${host}/tcp/${p}`;
}

/** SPEC §5.1: one TCP multiaddr per IPv4 of each selected interface. */
export function listenAddresses(c: TunnelConfig, ifaces = networkInterfaces()): string[] {
  const wanted = c.listenInterfaces.trim();
  const names = wanted === '' || wanted === '*' ? null : wanted.split(',').map((s) => s.trim()).filter(Boolean);
  const extra = c.extraFilteredInterfaces.split(',').map((s) => s.trim()).filter(Boolean);
  if (names) {
    const missing = names.filter((n) => !ifaces[n]);
    if (missing.length) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.listenInterfaces: ${missing.join(', ')} ${missing.length > 1 ? 'are not interfaces' : 'is not an interface'} of this host (have: ${Object.keys(ifaces).join(', ')})`);
  }
  const out: string[] = [];
  for (const [name, addrs] of Object.entries(ifaces)) {
    if (names ? !names.includes(name) : [...FILTERED_PREFIXES, ...extra].some((p) => name.startsWith(p))) continue;
    for (const a of addrs ?? []) if (a.family === 'IPv4') out.push(`/ip4/${a.address}/tcp/${c.listenPort}`);
  }
  if (out.length === 0) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.listenInterfaces: ${JSON.stringify(c.listenInterfaces)} selects no IPv4 address to listen on`);
  return out;
}

/**
 * The original tries three times; a refused port fails fast, a black hole waits for the timeout. The socket feeds
 * `splice` from the moment it opens (the splice holds what comes before its other end is attached), so it is not
 * paused and resumed around the attach, and TCP_NODELAY is left to Bun, which sets it on every connect: three
 * syscalls fewer per proxied connection.
 */
async function connectWithRetry(ip: string, port: number, attempts: number, timeoutMs: number, splice: Splice): Promise<Socket<Splice | null> | string> {
  let last = '';
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await Bun.sleep(100);
    let timedOut = false;
    const connecting = Bun.connect<Splice | null>({
      hostname: ip,
      port,
      allowHalfOpen: true,
      data: null,
      socket: {
        binaryType: 'uint8array',
        open: (s) => {
          if (!timedOut) s.data = splice; // a late socket is terminated unowned (below)
        },
        data: (s, d) => s.data?.data(0, d),
        drain: (s) => s.data?.drain(0),
        end: (s) => s.data?.end(0),
        error: (s) => s.data?.close(true),
        close: (s, err) => s.data?.close(!!err),
      },
    });
    // A connect that completes after we gave up on it must not stay open, unowned.
    connecting.then((s) => timedOut && s.terminate(), () => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return (await Promise.race([
        connecting,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            timedOut = true;
            reject(new Error(`timeout after ${timeoutMs} ms`));
          }, timeoutMs);
        }),
      ])) as Socket<Splice | null>;
    } catch (e) {
      last = (e as Error).message;
    } finally {
      clearTimeout(timer);
    }
  }
  return last;
}
