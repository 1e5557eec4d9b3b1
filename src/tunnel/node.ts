/**
 * tunnel/ — building the libp2p node (never dialing loopback unless it listens on loopback only itself): transports (TCP on Bun sockets, circuit relay v2), encryption (TLS 1.3 with
 * the PSK proven inside it, or pnet's XSalsa20 under TLS or Noise), yamux, mDNS, identify, ping, and the relay
 * server on relay nodes. Nothing is started here.
 *
 *   const { node, encryption } = await buildNode({ config, privateKey, psk, relays, transport, logger, onPskFailure });
 */
import { identify } from '@libp2p/identify';
import type { Libp2p, PeerId, PrivateKey } from '@libp2p/interface';
import { ping } from '@libp2p/ping';
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { yamux } from '@libp2p/yamux';
import { createLibp2p } from 'libp2p';
import { networkInterfaces } from 'node:os';
import type { Multiaddr } from '@multiformats/multiaddr';
import { EdgeMeshError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { TunnelConfig } from './config.ts';
import { skipRepeatedProtocolMerges } from './patches/private-api.ts';
import type { Relays } from './relays.ts';
import { type CipherChoice, chooseXSalsa20 } from './security/cipher.ts';
import { noiseCrypto, noiseEncrypter } from './security/noise.ts';
import { pnet } from './security/pnet.ts';
import { bunTls } from './security/tls.ts';
import { type BunTcpInit, bunTcp } from './transport.ts';

/** Interface name prefixes never listened on (the original's list), plus extraFilteredInterfaces. */
const FILTERED_PREFIXES = ['docker', 'edgemesh', 'tunl', 'flannel', 'cni', 'br', 'kube-ipvs'];

export interface NodeDeps {
  config: TunnelConfig;
  privateKey: PrivateKey;
  /** The 32-byte private-network key, or null when psk.enable is false. */
  psk: Uint8Array | null;
  relays: Relays;
  transport: BunTcpInit;
  logger: Logger;
  /** A connection failed the PSK: the TLS admission's details, or nothing (pnet, which cannot tell). */
  onPskFailure(f?: { why: string; remote: string; direction: 'inbound' | 'outbound'; remotePeer: string }): void;
  /** Whether the catalog binds this peer to a node: only those may hold relay reservations or use circuits. */
  isBound(peer: PeerId): boolean;
  /** A relay request from or to an unbound peer was refused. */
  onRelayRefused(what: 'reservation' | 'circuit', peer: PeerId): void;
}

export async function buildNode(d: NodeDeps): Promise<{ node: Libp2p; encryption: string }> {
  const c = d.config;
  const log = d.logger;
  const listen = listenAddresses(c);
  const nc = noiseCrypto(c.cipher as CipherChoice);
  if (nc.fallbackReason) log.warn('Noise AEAD: using the pure-JS engine (slower)', { reason: nc.fallbackReason });
  // Both handshakes are offered, the configured one first; the peer's choice shows per connection in status.
  // With a PSK, TLS demands the admission proof on connections without pnet, and Noise refuses them.
  const psk = d.psk ? { key: d.psk, timeoutMs: c.handshakeTimeoutMs, onFailure: (why: string, remote: string, direction: 'inbound' | 'outbound', remotePeer: string) => d.onPskFailure({ why, remote, direction, remotePeer }) } : null;
  const tls = bunTls(psk);
  const nz = noiseEncrypter(nc, psk !== null);
  const encrypters = c.encryption === 'noise' ? [nz, tls] : [tls, nz];
  const offered = `${c.encryption === 'noise' ? `/noise (chacha20-poly1305: ${nc.aead}), /tls/1.0.0` : `/tls/1.0.0, /noise (chacha20-poly1305: ${nc.aead})`}`;
  let protector;
  let encryption: string;
  if (d.psk) {
    const chosen = chooseXSalsa20(c.cipher as CipherChoice);
    // Noise has no exporter to bind the proof to: a Noise-first node dials in the stream form.
    const mode = c.encryption === 'noise' ? 'stream' : c.psk.mode;
    if (mode === 'stream' && chosen.fallbackReason) log.warn('PSK cipher: using the pure-JS engine (slower)', { reason: chosen.fallbackReason });
    encryption = mode === 'stream'
      ? `pnet/xsalsa20 (${chosen.engine.name}) + ${offered}`
      : `psk admission in TLS + ${offered} (pnet/xsalsa20 (${chosen.engine.name}) accepted inbound)`;
    protector = pnet({ key: d.psk, engine: chosen.engine, mode, timeoutMs: c.handshakeTimeoutMs, onFailure: () => d.onPskFailure() });
  } else {
    encryption = `${offered} (no PSK: psk.enable is false)`;
  }
  const services: Record<string, (components: never) => unknown> = {
    identify: identify({ runOnLimitedConnection: true }) as never,
    ping: ping({ runOnLimitedConnection: true }) as never,
  };
  if (d.relays.isRelay) {
    // Proxied streams live for hours: no per-circuit duration or data limit unless the operator sets one (the
    // library's defaults, 2 min and 128 KiB, would cut every real connection; the original sets none).
    const r = c.relayServer;
    const limited = r.circuitDurationSec > 0 || r.circuitDataMiB > 0;
    services.relay = circuitRelayServer({
      reservations: {
        maxReservations: r.maxReservations,
        applyDefaultLimit: limited,
        ...(limited ? {
          defaultDurationLimit: r.circuitDurationSec > 0 ? r.circuitDurationSec * 1000 : 2 ** 31 - 1,
          defaultDataLimit: r.circuitDataMiB > 0 ? BigInt(r.circuitDataMiB) * 1024n * 1024n : 2n ** 62n,
        } : {}),
      },
    }) as never;
  }
  // A loopback address of a peer is never dialed (it is our own machine), unless this node listens on loopback
  // alone (tests, a single-host mesh): peers that listened on "*" used to announce 127.0.0.1.
  const loopbackOnly = listen.every((a) => isLoopbackAddr(a));
  // Relays serve bound peers only: a stranger with the PSK (or anyone, with psk.enable false) gets no reservation,
  // and no circuit is made from or to an unbound peer. Checked again on the receiving end of a circuit.
  const connectionGater = {
    denyDialMultiaddr: (ma: Multiaddr): boolean => !loopbackOnly && isLoopbackAddr(ma.toString()),
    denyInboundRelayReservation: (source: PeerId): boolean => {
      if (d.isBound(source)) return false;
      d.onRelayRefused('reservation', source);
      return true;
    },
    denyOutboundRelayedConnection: (source: PeerId, destination: PeerId): boolean => {
      if (d.isBound(source) && d.isBound(destination)) return false;
      d.onRelayRefused('circuit', d.isBound(source) ? destination : source);
      return true;
    },
    denyInboundRelayedConnection: (_relay: PeerId, remote: PeerId): boolean => {
      if (d.isBound(remote)) return false;
      d.onRelayRefused('circuit', remote);
      return true;
    },
  };
  let node: Libp2p;
  try {
    node = await createLibp2p({
      privateKey: d.privateKey,
      // A relay announces the addresses it is configured with (its public ones), as the original does.
      addresses: { listen: [...listen, ...d.relays.listen()], appendAnnounce: d.relays.ownAdvertised() },
      transports: [bunTcp(d.transport), circuitRelayTransport({ reservationCompletionTimeout: c.handshakeTimeoutMs, reservationConcurrency: Math.max(1, c.relayNodes.length) })],
      connectionProtector: protector,
      connectionGater,
      connectionEncrypters: encrypters as never,
      streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 4 * 1024 * 1024 } } as never)],
      // mDNS (and its multicast DNS library) is loaded only when it is on; it asks the LAN every 30 s (libp2p's
      // default is 10 s): a node that starts asks at once and dials what answers, so only the others learn of it
      // later, and an idle node answers a third as many queries.
      peerDiscovery: c.mdns ? [(await import('@libp2p/mdns')).mdns({ serviceTag: c.rendezvous, interval: 30_000 })] : [],
      // libp2p's own limit of connections waiting for a handshake is 10 for the whole node: raised past what the
      // transport's admission lets through (admission.ts), which limits them per address instead.
      // A ping on every connection every 30 s, as go-yamux's keep-alive (libp2p's default is 10 s): it keeps NAT
      // mappings and finds a silently dead connection; closes and resets are seen at once without it.
      connectionMonitor: { pingInterval: 30_000 },
      connectionManager: { maxConnections: 400, inboundUpgradeTimeout: c.handshakeTimeoutMs, maxIncomingPendingConnections: (d.transport.admission?.total ?? 10) + 192 },
      services: services as never,
      // Started by the module, once every handler and listener is in place (identify results arrive at once).
      start: false,
    });
  } catch (e) {
    throw startError(e);
  }
  if (!skipRepeatedProtocolMerges(node)) log.warn('libp2p patch private-api: the peer store has no merge(); every stream records its protocol again');
  return { node, encryption };
}

export function startError(e: unknown): EdgeMeshError {
  return new EdgeMeshError('TUNNEL_START', `the tunnel could not start: ${(e as Error).message}; check modules.edgeTunnel.listenPort and listenInterfaces`, { cause: e });
}

/** One TCP multiaddr per IPv4 of each selected interface, as the original listens. */
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
    // Loopback only when named: with "*" the original listens on and advertises 127.0.0.1 too, and peers that
    // learn it dial their own loopback (seen as false PSK failures on every survivor when a relay died).
    for (const a of addrs ?? []) if (a.family === 'IPv4' && (names || !a.internal)) out.push(`/ip4/${a.address}/tcp/${c.listenPort}`);
  }
  if (out.length === 0) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.listenInterfaces: ${JSON.stringify(c.listenInterfaces)} selects no IPv4 address to listen on${names ? '' : ' ("*" leaves out loopback: name it, e.g. "lo", to listen there)'}`);
  return out;
}

/** Whether a multiaddr's host is a loopback address (127.0.0.0/8, ::1). */
export function isLoopbackAddr(ma: string): boolean {
  return /^\/ip4\/127\./.test(ma) || /^\/ip6\/::1\//.test(ma);
}
