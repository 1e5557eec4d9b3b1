/**
 * tunnel/ — relays: which nodes relay (edgeTunnel.relayNodes, reloaded live from the config file), connecting to
 * each and holding a reservation on each (circuit relay v2), so a relay that dies leaves the others already
 * reserved: HA without waiting for a heartbeat. The original reconnects every heartbeatPeriod (120 s); here a
 * check runs every RELAY_CHECK_MS and on every change of our own addresses.
 *
 *   const relays = new Relays({ config, nodeName, peers, logger });
 *   relays.listen()          // the '/p2p-circuit' listen addresses the node starts with (one per relay)
 *   relays.attach(node); relays.start();
 *   relays.circuitsTo(peer)  // how to reach a peer through every relay
 */
import type { Libp2p, PeerId } from '@libp2p/interface';
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr';
import type { Logger } from '../obs/logger.ts';
import { listenOnRunningNode } from './patches/private-api.ts';
import { type PeerBook, toMultiaddr, tryPush } from './peers.ts';
import type { TunnelConfig } from './config.ts';

const RELAY_CHECK_MS = 5_000;
/** How long a connected relay may go without our reservation on it before the connection is remade. */
const RESERVATION_GRACE_MS = 12_000;

export interface RelaysDeps {
  config: TunnelConfig;
  nodeName: string;
  peers: PeerBook;
  logger: Logger;
}

export interface Relay {
  name: string;
  peer: PeerId;
  addrs: Multiaddr[];
}

export class Relays {
  /** The relay list: from the config at start, replaced by set() when the config file changes. */
  private list: TunnelConfig['relayNodes'];
  /** Whether this node serves as a relay (decided at start; changing it takes a restart, as in the original). */
  readonly isRelay: boolean;
  private node: Libp2p | null = null;
  private circuitListens = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly dialing = new Set<string>();
  private readonly unreservedSince = new Map<string, number>();
  private readonly reservedOn = new Set<string>();

  constructor(private readonly d: RelaysDeps) {
    this.list = d.config.relayNodes;
    this.isRelay = this.list.some((r) => r.nodeName === d.nodeName);
  }

  /** The relays other than this node whose peer ID the catalog knows, with their addresses. */
  relays(): Relay[] {
    const out: Relay[] = [];
    for (const r of this.list) {
      if (r.nodeName === this.d.nodeName) continue;
      const peer = this.d.peers.peerOf(r.nodeName);
      if (!peer) continue;
      out.push({ name: r.nodeName, peer, addrs: this.addrsOf(r) });
    }
    return out;
  }

  /**
   * One `/p2p-circuit` listen address per configured relay: the relay transport then holds a reservation on each
   * connected relay. Reservations are renewed by the transport before they expire.
   */
  listen(): string[] {
    return this.relays().map(() => '/p2p-circuit');
  }

  /** The addresses this node announces when it is a relay (its configured, public ones), as the original does. */
  ownAdvertised(): string[] {
    const me = this.list.find((r) => r.nodeName === this.d.nodeName);
    return (me?.advertiseAddress ?? []).map((a) => toMultiaddr(a, this.d.config.listenPort));
  }

  /** The configured addresses of `nodeName` when it is a relay (it is reached there directly too). */
  advertisedBy(nodeName: string): Multiaddr[] {
    const r = this.list.find((x) => x.nodeName === nodeName);
    return r ? this.addrsOf(r) : [];
  }

  /** A relay entry's advertiseAddress as multiaddrs at our tunnel port (a bad entry costs that entry only). */
  private addrsOf(r: TunnelConfig['relayNodes'][number]): Multiaddr[] {
    const out: Multiaddr[] = [];
    for (const a of r.advertiseAddress) tryPush(out, toMultiaddr(a, this.d.config.listenPort));
    return out;
  }

  /** Whether `ip` is a configured address of a relay. */
  isRelayAddress(ip: string): boolean {
    const host = ip.replace(/^::ffff:/, '');
    return this.list.some((r) => r.advertiseAddress.some((a) => a === host || a.startsWith(`${host}:`) || a.includes(`/${host}/`)));
  }

  /** `peer` through every relay other than itself. */
  circuitsTo(peer: PeerId): Multiaddr[] {
    const out: Multiaddr[] = [];
    for (const r of this.relays()) {
      if (r.peer.equals(peer)) continue;
      for (const a of r.addrs) tryPush(out, circuitVia(a, r.peer));
    }
    return out;
  }

  /** The node is built (with listen() among its addresses): connect and reserve from now on. */
  attach(node: Libp2p): void {
    this.node = node;
    this.circuitListens = this.listen().length;
  }

  start(): void {
    const node = this.node;
    if (!node) return;
    this.check();
    this.timer = setInterval(() => this.check(), RELAY_CHECK_MS);
    this.timer.unref?.();
    // Reservations show up as circuit listen addresses; note them as they come (and check the relays again).
    node.addEventListener('self:peer:update', () => this.check());
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.node = null;
  }

  /**
   * The relay list changed in the config file (the original's watcher does the same): connect to the new relays
   * and hold a reservation on each. Becoming or ceasing to be a relay server takes a restart, as in the original.
   */
  async set(list: TunnelConfig['relayNodes']): Promise<void> {
    const was = this.list.map((r) => r.nodeName).sort().join(',');
    this.list = list;
    const now = list.map((r) => r.nodeName).sort().join(',');
    this.d.logger.info('relay list reloaded', { from: was || 'none', to: now || 'none' });
    if (list.some((r) => r.nodeName === this.d.nodeName) !== this.isRelay) {
      this.d.logger.warn(`this node ${this.isRelay ? 'left' : 'joined'} the relay list; restart the agent to ${this.isRelay ? 'stop' : 'start'} serving as a relay`);
    }
    const want = this.listen().length;
    const node = this.node;
    if (node && want > this.circuitListens) {
      const extra = Array.from({ length: want - this.circuitListens }, () => multiaddr('/p2p-circuit'));
      this.circuitListens = want;
      await listenOnRunningNode(node, extra).catch((e: Error) => this.d.logger.warn('could not add a relay reservation', { error: e.message }));
    }
    this.check();
  }

  /** Connect to every relay that is not connected, and make sure we hold a reservation on each connected one. */
  private check(): void {
    const node = this.node;
    if (!node) return;
    const listening = node.getMultiaddrs().map(String);
    for (const r of this.relays()) {
      if (node.getConnections(r.peer).length > 0) {
        this.checkReservation(node, r, listening);
        continue;
      }
      if (this.dialing.has(r.name)) continue;
      this.dialing.add(r.name);
      node.dial(r.addrs.map((a) => a.encapsulate(`/p2p/${r.peer.toString()}`)), { signal: AbortSignal.timeout(this.d.config.handshakeTimeoutMs) })
        .then(() => this.d.logger.info('connected to relay', { relay: r.name }))
        .catch((e: Error) => this.d.logger.warn('relay not reachable', { relay: r.name, error: e.message }))
        .finally(() => this.dialing.delete(r.name));
    }
  }

  /**
   * Connected but holding no reservation there for a while (a reservation attempt failed, and the relay
   * transport does not retry on a live connection; its discovery skips a relay for good after some failures):
   * ask for one explicitly by listening on this relay's circuit address, and reconnect if that fails.
   */
  private checkReservation(node: Libp2p, r: Relay, listening: string[]): void {
    const reserved = listening.some((a) => a.includes(`/p2p/${r.peer.toString()}/p2p-circuit`));
    if (reserved !== this.reservedOn.has(r.name)) {
      if (reserved) this.reservedOn.add(r.name);
      else this.reservedOn.delete(r.name);
      this.d.logger.info(reserved ? 'holding a reservation on relay' : 'lost the reservation on relay', { relay: r.name });
    }
    if (reserved) {
      this.unreservedSince.delete(r.name);
      return;
    }
    const since = this.unreservedSince.get(r.name);
    if (since === undefined) {
      this.unreservedSince.set(r.name, performance.now());
      return;
    }
    if (performance.now() - since <= RESERVATION_GRACE_MS) return;
    this.unreservedSince.set(r.name, performance.now());
    this.d.logger.warn('no reservation on a connected relay; requesting one', { relay: r.name });
    listenOnRunningNode(node, r.addrs.map((a) => multiaddr(circuitVia(a, r.peer)))).catch((e: Error) => {
      this.d.logger.warn('reservation request failed; reconnecting to the relay', { relay: r.name, error: e.message });
      for (const c of node.getConnections(r.peer)) c.close().catch(() => c.abort(new Error('reconnecting to the relay')));
    });
  }
}

/** The address of a peer reached through `relay` at `relayAddr`. */
export function circuitVia(relayAddr: Multiaddr, relay: PeerId): string {
  return `${relayAddr.toString()}/p2p/${relay.toString()}/p2p-circuit`;
}
