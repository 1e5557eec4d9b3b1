/**
 * tunnel/patches/ — the two places the tunnel uses libp2p beyond its public API, kept here with the patches so
 * that a libp2p upgrade is checked against one table (index.ts).
 *
 * - listenOnRunningNode: libp2p has no public call to add listen addresses to a running node (a relay added to
 *   the config file needs a '/p2p-circuit' listener, a relay without our reservation an explicit circuit
 *   address); its transport manager, a private component, has one.
 * - skipRepeatedProtocolMerges: libp2p records "this peer speaks protocol P" in the peer store on every stream
 *   it opens or accepts (a locked read-compare-write, ~0.2 ms of CPU on each side per stream, measured here).
 *   The answer never changes for a connected peer, so after the first time per peer and protocol the call is
 *   answered at once; everything else passes. An instance patch, per node.
 */
import type { Libp2p, PeerId } from '@libp2p/interface';
import type { Multiaddr } from '@multiformats/multiaddr';

export function listenOnRunningNode(node: Libp2p, addrs: Multiaddr[]): Promise<void> {
  const tm = (node as unknown as { components?: { transportManager?: { listen?(a: Multiaddr[]): Promise<void> } } }).components?.transportManager;
  if (typeof tm?.listen !== 'function') return Promise.reject(new Error('this libp2p version has no transport manager to listen with (see src/tunnel/patches/index.ts)'));
  return tm.listen(addrs);
}

type Merge = (peer: PeerId, data: Record<string, unknown>, options?: unknown) => Promise<unknown>;

export function skipRepeatedProtocolMerges(node: Libp2p): boolean {
  const store = node.peerStore as unknown as { merge?: Merge };
  if (typeof store.merge !== 'function') return false;
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
  return true;
}
