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
import type { Logger } from '../obs/logger.ts';
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

  private addressIndex: { version: number; ips: Set<string> } | null = null;

  /**
   * Whether `ip` is an address of a node in the catalog (InternalIP, ExternalIP, or the host of a
   * tunnel-addresses multiaddr): such connections are always admitted (admission.ts). Rebuilt per catalog version.
   */
  isNodeAddress(ip: string): boolean {
    const snap = this.catalog.snapshot();
    if (this.addressIndex?.version !== snap.version) {
      const ips = new Set<string>();
      for (const n of snap.nodes.values()) {
        for (const a of n.addresses) if (a.type === 'InternalIP' || a.type === 'ExternalIP') ips.add(a.address);
        const ann = n.annotations[ADDRESSES_ANNOTATION];
        if (ann) for (const m of ann.matchAll(/\/ip[46]\/([^/,\s]+)/g)) ips.add(m[1]!);
      }
      this.addressIndex = { version: snap.version, ips };
    }
    return this.addressIndex.ips.has(ip.replace(/^::ffff:/, ''));
  }

  /** The node name bound to a peer ID given as a string, or null. */
  nodeOfId(id: string): string | null {
    try {
      return this.nodeOf(peerIdFromString(id));
    } catch {
      return null;
    }
  }

  /** Whether the catalog binds `peer` to some node (only such peers may use the tunnel, relays or punching). */
  isBound(peer: PeerId): boolean {
    return this.nodeOf(peer) !== null;
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

/**
 * Watches the bindings: a node whose peer ID changes while we run is reported (log and count: whoever can rebind a
 * node receives its tunnel traffic), and this node's own binding is checked against its key at start and on every
 * change (other nodes refuse a node whose key differs from its binding).
 */
export class BindingWatch {
  private readonly bound = new Map<string, string>();
  private lastOwn: string | null = null;
  changes = 0;

  constructor(private readonly d: { catalog: Catalog; nodeName: string; ownPeerId: string; logger: Logger }) {}

  /** Start watching; returns the unsubscribe function. */
  start(): () => void {
    this.scan(false);
    return this.d.catalog.subscribe((_snap, change) => {
      if (change.keys.nodes.size) this.scan(true);
    });
  }

  private scan(report: boolean): void {
    const seen = new Set<string>();
    for (const n of this.d.catalog.snapshot().nodes.values()) {
      const id = n.annotations[PEER_ID_ANNOTATION];
      if (!id) continue;
      seen.add(n.name);
      const was = this.bound.get(n.name);
      this.bound.set(n.name, id);
      // This node's binding becoming its own key is this agent's own publishing, not news.
      const ours = n.name === this.d.nodeName && id === this.d.ownPeerId;
      if (report && was !== undefined && was !== id && !ours) {
        this.changes++;
        this.d.logger.warn('a node\'s tunnel binding changed: its traffic now goes to another key', { node: n.name, from: was, to: id });
      }
    }
    for (const name of [...this.bound.keys()]) if (!seen.has(name)) this.bound.delete(name);
    const own = this.bound.get(this.d.nodeName) ?? null;
    if (own !== null && own !== this.d.ownPeerId && own !== this.lastOwn) {
      this.d.logger.error('the catalog binds this node to another peer ID than its key\'s: other nodes will refuse it', {
        node: this.d.nodeName, bound: own, ours: this.d.ownPeerId,
        fix: `set the Node's ${PEER_ID_ANNOTATION} annotation to ${this.d.ownPeerId} (the catalog file, or kubectl annotate node ${this.d.nodeName} ${PEER_ID_ANNOTATION}=${this.d.ownPeerId} --overwrite), or restore the identity key that matches ${own}`,
      });
    }
    this.lastOwn = own;
  }
}
