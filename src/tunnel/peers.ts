/**
 * tunnel/ — who is who: a node's peer ID is bound to its node name in the catalog (Node annotation
 * `edgemesh.io/peer-id`, published by each agent in Kubernetes mode, written in the catalog file in standalone
 * mode). The dialer dials only the bound peer ID and TLS proves the key, so a peer cannot answer for a name it is
 * not bound to; the discovery handshake and the receiver check a peer's claimed name against the binding.
 *
 *   const peers = new PeerBook(catalog);
 *   peers.peerOf('edge-b')   // PeerId | null
 *   peers.nodeOf(peerId)     // 'edge-b' | null
 */
import type { Connection, Libp2p, PeerId } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr';
import type { Catalog } from '../catalog/catalog.ts';
import { parseHostPort } from '../config/schema.ts';
import { isRelayed } from './transport.ts';

/** Node annotation binding a node name to its tunnel peer ID. */
export const PEER_ID_ANNOTATION = 'edgemesh.io/peer-id';
/** Node annotation listing where a node's tunnel listens (comma-separated multiaddrs); optional. */
export const ADDRESSES_ANNOTATION = 'edgemesh.io/tunnel-addresses';

export class PeerBook {
  /**
   * Parsed peer IDs by node, kept while the annotation is unchanged: parsing (base58 and multihash decoding) and
   * printing a fresh PeerId cost ~4% of the CPU of a proxied connection through the tunnel, once per connection.
   */
  private readonly peerIds = new Map<string, { id: string; peer: PeerId | null }>();
  private peerIndex: { version: number; names: Map<string, string> } | null = null;

  constructor(private readonly catalog: Catalog, private readonly listenPort: number) {}

  /** The peer ID the catalog binds to `nodeName`, or null. */
  peerOf(nodeName: string): PeerId | null {
    const id = this.catalog.snapshot().nodes.get(nodeName)?.annotations[PEER_ID_ANNOTATION];
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
    const snap = this.catalog.snapshot();
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

  /** Whether `peer` is the one the catalog binds to `nodeName`. */
  claimMatches(nodeName: string, peer: PeerId): boolean {
    const bound = this.peerOf(nodeName);
    return bound !== null && bound.equals(peer);
  }

  /**
   * Where a node's tunnel listens, as the catalog says: its addresses annotation, else its InternalIP and
   * ExternalIP at our tunnel port.
   */
  addressesOf(nodeName: string): Multiaddr[] {
    const out: Multiaddr[] = [];
    const n = this.catalog.snapshot().nodes.get(nodeName);
    const ann = n?.annotations[ADDRESSES_ANNOTATION];
    if (ann) for (const a of ann.split(',')) tryPush(out, a.trim());
    else if (n) for (const a of n.addresses) if (a.type === 'InternalIP' || a.type === 'ExternalIP') tryPush(out, toMultiaddr(a.address, this.listenPort));
    return out;
  }
}

/** A direct connection to `peer` when there is one, else a relayed one, else none. */
export function bestConnection(node: Libp2p | null, peer: PeerId): Connection | undefined {
  let relayed: Connection | undefined;
  for (const c of node?.getConnections(peer) ?? []) {
    if (c.status !== 'open') continue;
    if (!isRelayed(c)) return c;
    relayed ??= c;
  }
  return relayed;
}

/** Parse `a` into `out`; a bad annotation or address costs that address only. */
export function tryPush(out: Multiaddr[], a: string): void {
  try {
    out.push(multiaddr(a));
  } catch {
    // skipped
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
