/**
 * tunnel/ — what the tunnel tells: its counters, each connected peer with its path and round trip (the ping also
 * keeps idle NAT mappings alive), and the Prometheus metrics.
 */
import type { Libp2p, PeerId } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { MetricsRegistry } from '../obs/metrics.ts';
import { type PeerBook, bestConnection } from './peers.ts';
import type { Admission } from './admission.ts';
import type { StreamLimits } from './limits.ts';
import type { HolePuncher } from './punch.ts';
import { isRelayed } from './transport.ts';

export interface TunnelStats {
  streamsOut: number;
  streamsIn: number;
  /** Proxied connections sent on a session stream that had carried one before. */
  sessionReuses: number;
  refused: number;
  dialFailures: number;
  discoveryRefused: number;
  pskFailures: number;
  /** UDP datagrams dropped because their flow's stream held UDP_STREAM_LIMIT unsent (a slow or stopped reader). */
  udpDropped: number;
  /** Datagrams to an endpoint the kernel refused (ICMP port unreachable: nothing listens there). */
  udpRefused: number;
  /** Relay reservations and circuits refused because a peer is bound to no node. */
  relayRefused: number;
}

export function newStats(): TunnelStats {
  return { streamsOut: 0, streamsIn: 0, sessionReuses: 0, refused: 0, dialFailures: 0, discoveryRefused: 0, pskFailures: 0, udpDropped: 0, udpRefused: 0, relayRefused: 0 };
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
  punch: { sourcePort: number | null; observed: string[]; attempts: number; successes: number; failures: number; refused: number };
  peers: PeerStatus[];
}

export interface StatusDeps {
  peers: PeerBook;
  stats: TunnelStats;
  metrics?: MetricsRegistry;
}

/** The facts of a running node that status needs besides the peers. */
export interface NodeFacts {
  node: Libp2p | null;
  encryption: string;
  isRelay: boolean;
  sourcePort: number | null;
  puncher: HolePuncher | null;
  admission: Admission | null;
  inLimits: StreamLimits;
  outLimits: StreamLimits;
  /** Nodes whose binding changed while this agent ran (peers.ts BindingWatch). */
  bindingChanges: number;
}

export class TunnelReporter {
  /** Round trips measured when a peer connected; later ones come from libp2p's connection monitor. */
  private readonly rtt = new Map<string, number>();
  private node: Libp2p | null = null;

  constructor(private readonly d: StatusDeps) {}

  /**
   * Each new peer is pinged at once, for its round trip in status. After that the connection monitor's pings
   * (node.ts: every 30 s on every connection, `rtt` on the connection) are read: a second pinger of our own every
   * 10 s opened a stream per peer for nothing and was a share of an idle agent's CPU.
   */
  start(node: Libp2p): void {
    this.node = node;
    node.addEventListener('peer:connect', (evt) => void this.pingPeer(evt.detail));
    node.addEventListener('peer:disconnect', (evt) => this.rtt.delete(evt.detail.toString()));
  }

  stop(): void {
    this.node = null;
  }

  /** Each connected peer (once, by its best connection: direct before relayed) with its path and round trip. */
  describe(f: NodeFacts): TunnelStatus {
    const node = f.node;
    const punch = { sourcePort: f.sourcePort, observed: f.puncher?.addresses() ?? [], ...(f.puncher?.stats ?? { attempts: 0, successes: 0, failures: 0, refused: 0 }) };
    if (!node) return { peerId: '', encryption: f.encryption, listen: [], relay: f.isRelay, punch, peers: [] };
    const peers: PeerStatus[] = [];
    for (const peer of node.getPeers()) {
      const conns = node.getConnections(peer).filter((c) => c.status === 'open');
      const best = bestConnection(node, peer) ?? conns[0];
      if (!best) continue;
      const addr = best.remoteAddr.toString();
      const relayed = isRelayed(best);
      const relayId = relayed ? /\/p2p\/([^/]+)\/p2p-circuit/.exec(addr)?.[1] : undefined;
      let relay: string | undefined;
      if (relayId) {
        try {
          relay = this.d.peers.nodeOf(peerIdFromString(relayId)) ?? relayId;
        } catch {
          relay = relayId;
        }
      }
      peers.push({
        node: this.d.peers.nodeOf(peer) ?? '?', peerId: peer.toString(), path: relayed ? 'relayed' : 'direct', relay, remoteAddr: addr,
        encryption: best.encryption ?? '', streams: conns.reduce((n, c) => n + c.streams.length, 0), connections: conns.length, rttMs: best.rtt ?? this.rtt.get(peer.toString()),
      });
    }
    return { peerId: node.peerId.toString(), encryption: f.encryption, listen: node.getMultiaddrs().map(String), relay: f.isRelay, punch, peers };
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

  registerMetrics(facts: () => NodeFacts): void {
    const m = this.d.metrics;
    if (!m) return;
    const st = this.d.stats;
    m.counterFrom('edgemesh_tunnel_streams_out_total', 'Proxied connections sent through the tunnel').set(() => st.streamsOut);
    m.counterFrom('edgemesh_tunnel_streams_in_total', 'Proxied connections received through the tunnel and dialed here').set(() => st.streamsIn);
    m.counterFrom('edgemesh_tunnel_session_reuses_total', 'Proxied connections sent on an already open session stream').set(() => st.sessionReuses);
    m.counterFrom('edgemesh_tunnel_refused_total', 'Tunnel CONNECTs refused (not a local endpoint, unbound peer, dial failed)').set(() => st.refused);
    m.counterFrom('edgemesh_tunnel_dial_failures_total', 'Tunnel streams that could not be opened to another node').set(() => st.dialFailures);
    m.counterFrom('edgemesh_tunnel_discovery_refused_total', 'Peers refused for claiming a node name bound to another peer').set(() => st.discoveryRefused);
    m.counterFrom('edgemesh_tunnel_udp_dropped_total', 'UDP datagrams dropped because the tunnel stream of their flow was full (a slow or stopped reader)').set(() => st.udpDropped);
    m.counterFrom('edgemesh_tunnel_udp_refused_total', 'UDP datagrams from peers that the endpoint refused (ICMP port unreachable: nothing listens there)').set(() => st.udpRefused);
    m.counterFrom('edgemesh_tunnel_relay_refused_total', 'Relay reservations and circuits refused because a peer is bound to no node').set(() => st.relayRefused);
    m.counterFrom('edgemesh_tunnel_psk_failures_total', 'Connections that failed the private-network (PSK) handshake').set(() => st.pskFailures);
    m.counterFrom('edgemesh_tunnel_punch_attempts_total', 'Hole-punching attempts (DCUtR)').set(() => facts().puncher?.stats.attempts ?? 0);
    m.counterFrom('edgemesh_tunnel_punch_successes_total', 'Hole punches that produced a direct connection').set(() => facts().puncher?.stats.successes ?? 0);
    m.counterFrom('edgemesh_tunnel_punch_refused_total', 'Hole-punch requests refused: unbound peer, direct connection, or no address that may be dialed').set(() => facts().puncher?.stats.refused ?? 0);
    m.gauge('edgemesh_tunnel_connections', 'Open peer connections, by path').set(() => facts().node?.getConnections().filter((c) => !isRelayed(c)).length ?? 0, { path: 'direct' });
    m.gauge('edgemesh_tunnel_connections', 'Open peer connections, by path').set(() => facts().node?.getConnections().filter(isRelayed).length ?? 0, { path: 'relayed' });
    const admission = m.counterFrom('edgemesh_tunnel_admission_refused_total', 'Inbound connections closed before their handshake, by reason: per-address or total limit of connections waiting for a handshake, or silent past the first-bytes deadline');
    for (const reason of ['per-address', 'total', 'silent'] as const) admission.set(() => facts().admission?.refused[reason] ?? 0, { reason });
    const limited = m.counterFrom('edgemesh_tunnel_streams_limited_total', 'Tunnel streams refused by tunnelLimitConfig, by direction and limit (per peer or in all)');
    for (const dir of ['inbound', 'outbound'] as const) {
      for (const limit of ['peer', 'total'] as const) limited.set(() => (dir === 'inbound' ? facts().inLimits : facts().outLimits).refused[limit], { direction: dir, limit });
    }
    m.counterFrom('edgemesh_tunnel_binding_changes_total', 'Nodes whose tunnel peer ID binding changed while this agent ran').set(() => facts().bindingChanges);
  }
}
