/**
 * tunnel/ — the discovery handshake (/libp2p/tunnel-discovery/1.0.0, the original's wire format): each side
 * names its node; a name the catalog binds to another peer is refused. Run with every peer found by mDNS and on
 * every outbound connection; the original records whatever name a peer claims.
 */
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface';
import type { Logger } from '../obs/logger.ts';
import type { PeerBook } from './peers.ts';
import { DISCOVERY_PROTOCOL, MsgType, decodeDiscovery, encodeDiscovery, lengthPrefixed, readOne } from './protocol.ts';
import type { TunnelStats } from './status.ts';

export interface DiscoveryDeps {
  nodeName: string;
  peers: PeerBook;
  handshakeTimeoutMs: number;
  stats: TunnelStats;
  logger: Logger;
}

export class Discovery {
  constructor(private readonly d: DiscoveryDeps) {}

  /** Register the handler and run the handshake with discovered and newly dialed peers. */
  attach(node: Libp2p): Promise<void> {
    node.addEventListener('peer:discovery', (evt) => {
      const id = evt.detail.id;
      if (node.getConnections(id).length === 0) this.discover(node, id, 'MDNS').catch(() => {});
    });
    node.addEventListener('connection:open', (evt) => {
      if (evt.detail.direction === 'outbound') this.discover(node, evt.detail.remotePeer, 'DHT').catch(() => {});
    });
    return node.handle(DISCOVERY_PROTOCOL, (s, conn) => this.onDiscovery(s, conn), { runOnLimitedConnection: true });
  }

  private async discover(node: Libp2p, peer: PeerId, how: 'MDNS' | 'DHT'): Promise<void> {
    const signal = AbortSignal.timeout(this.d.handshakeTimeoutMs);
    const s = await node.dialProtocol(peer, DISCOVERY_PROTOCOL, { signal, runOnLimitedConnection: true });
    try {
      s.send(lengthPrefixed(encodeDiscovery({ type: MsgType.CONNECT, protocol: how, nodeName: this.d.nodeName })));
      const reply = decodeDiscovery(await readOne(s, signal));
      if (reply.type !== MsgType.SUCCESS) {
        // A peer answers FAILED for one reason only: its catalog binds our node name to another key (or to none).
        this.d.logger.warn('peer refused our discovery handshake: its catalog does not bind this node\'s name to this node\'s key', {
          peer: peer.toString(), node: this.d.nodeName,
          fix: `check the ${'edgemesh.io/peer-id'} annotation of Node ${this.d.nodeName} there against \`edgemesh identity\` on this node`,
        });
      } else if (!this.d.peers.claimMatches(reply.nodeName, peer)) {
        this.d.stats.discoveryRefused++;
        this.d.logger.warn('peer claims a node name that the catalog binds to another peer; ignored', { peer: peer.toString(), claimed: reply.nodeName });
      }
    } finally {
      s.abort(new Error('discovery done')); // the original resets the stream after the handshake
    }
  }

  private async onDiscovery(s: Stream, conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.d.handshakeTimeoutMs);
    try {
      const req = decodeDiscovery(await readOne(s, signal));
      if (req.type !== MsgType.CONNECT) throw new Error('not a CONNECT');
      if (!this.d.peers.claimMatches(req.nodeName, conn.remotePeer)) {
        this.d.stats.discoveryRefused++;
        this.d.logger.warn('refused a peer claiming a node name it is not bound to', {
          peer: conn.remotePeer.toString(), claimed: req.nodeName, bound: this.d.peers.peerOf(req.nodeName)?.toString() ?? 'none',
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
}
