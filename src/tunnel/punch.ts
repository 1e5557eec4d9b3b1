/**
 * tunnel/ — TCP hole punching over a relayed connection: the DCUtR protocol (/libp2p/dcutr, libp2p/specs
 * relay/DCUtR.md, same wire messages as go-libp2p and js-libp2p), with the pieces that make it work on Bun.
 *
 *   A dialed B through a relay. B (inbound side) opens a dcutr stream over the relayed connection:
 *   B → A  CONNECT { B's observed addresses }       B starts a clock
 *   A → B  CONNECT { A's observed addresses }       B: rtt = clock
 *   B → A  SYNC                                      A dials B at once; B dials A after rtt/2
 *   both SYNs cross in the NATs (TCP simultaneous open) → one direct connection; A upgrades it as the initiator
 *   of the security handshake, B as the responder (the spec's roles). New streams then prefer it.
 *
 * Why not @libp2p/dcutr (in a NAT lab of namespaces on Bun it never produced a direct connection; docs/tunnel.md): it takes
 * its addresses from the address manager, which never learns observed TCP addresses, and filters out private
 * ranges that edge WANs use; each punch dial leaves from a new port, so the NAT mapping the relay saw is not the
 * one punched; its first, one-sided dial leaves a conntrack entry that resets the real punch; and the role of the
 * punched socket is lost in the dial queue (both sides act as initiator). Here: observed addresses come from what
 * peers report in identify; every dial leaves from one fixed port (net/fixed-port.ts, used by the transport too,
 * so relay connections carry the same mapping); there is no one-sided attempt; roles are set explicitly.
 *
 * Behind NATs that randomise ports or answer with RST, punching fails every time; the relayed connection keeps
 * working, and attempts/successes are counted.
 *
 * What a punch may dial: only for a peer bound to a node in the catalog, only over a relayed connection to it
 * (a direct one needs no punch), and only public or private unicast IPv4 addresses, at most MAX_TARGETS of them:
 * never loopback, link-local, multicast or "this network". Otherwise any PSK holder could have a node dial
 * anything and time the failures (a port scanner: 53 ms for a closed port, 10 s for an open one, measured).
 * Refusals are logged and counted.
 */
import type { Connection, Libp2p, MultiaddrConnection, PeerId, Stream } from '@libp2p/interface';
import type { Logger } from '../obs/logger.ts';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { type MessageSource, lengthPrefixed, readMessage, readVarint, writeVarint } from './protocol.ts';
import { type BunTcpInit, isRelayed, openConnection } from './transport.ts';

export const DCUTR_PROTOCOL = '/libp2p/dcutr';
const CONNECT = 100;
const SYNC = 300;
const MAX_MESSAGE = 4096;
const ATTEMPTS = 3;
/** Addresses of a peer tried per punch; DCUtR peers send a handful (their observed addresses). */
const MAX_TARGETS = 4;

/** Whether an IPv4 address may be a punch target: unicast, not loopback, link-local, multicast, broadcast or 0/8. */
export function punchable(ip: string): boolean {
  const p = ip.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) return false;
  const [a, b] = p as [number, number, number, number];
  if (a === 0 || a === 127 || a >= 224) return false; // this network, loopback, multicast and reserved/broadcast
  if (a === 169 && b === 254) return false; // link-local
  return true;
}

export interface PunchStats {
  attempts: number;
  successes: number;
  failures: number;
  /** Punch requests refused: an unbound peer, a direct connection, or no address that may be dialed. */
  refused: number;
}

/** HolePunch { required Type type = 1; repeated bytes ObsAddrs = 2; } */
function encode(type: number, addrs: Uint8Array[]): Uint8Array {
  const out: number[] = [0x08];
  writeVarint(out, type);
  for (const a of addrs) {
    out.push(0x12);
    writeVarint(out, a.length);
    for (const b of a) out.push(b);
  }
  return Uint8Array.from(out);
}

function decode(buf: Uint8Array): { type: number; addrs: Uint8Array[] } {
  let i = 0;
  const varint = (): number => {
    const v = readVarint(buf, i);
    if (!v || v.next - i > 5) throw new Error('bad varint');
    i = v.next;
    return v.value;
  };
  let type = -1;
  const addrs: Uint8Array[] = [];
  while (i < buf.length) {
    const tag = varint();
    if (tag === 0x08) type = varint();
    else if (tag === 0x12) {
      const n = varint();
      if (i + n > buf.length) throw new Error('truncated address');
      addrs.push(buf.slice(i, i + n));
      i += n;
    } else if ((tag & 7) === 0) varint();
    else if ((tag & 7) === 2) i += varint();
    else throw new Error(`unsupported wire type ${tag & 7}`);
  }
  return { type, addrs };
}

/** IPv4 TCP multiaddrs (the only ones this transport can punch from its fixed port). */
function tcp4(addrs: Uint8Array[]): { host: string; port: number }[] {
  const out: { host: string; port: number }[] = [];
  for (const a of addrs) {
    try {
      const comps = multiaddr(a).getComponents();
      const ip = comps.find((c) => c.name === 'ip4')?.value;
      const port = comps.find((c) => c.name === 'tcp')?.value;
      if (ip && port && !comps.some((c) => c.name === 'p2p-circuit')) out.push({ host: ip, port: Number(port) });
    } catch {
      // one bad address costs that address only
    }
  }
  return out;
}

export interface PuncherDeps {
  node: Libp2p;
  transport: BunTcpInit;
  log: Logger;
  timeoutMs: number;
  /** Whether the catalog binds this peer to a node (only those may punch). */
  isBound: (peer: PeerId) => boolean;
  /** Called with each direct connection punched (for logs and status). */
  onPunched?: (peer: PeerId, conn: Connection, ms: number) => void;
}

export class HolePuncher {
  readonly stats: PunchStats = { attempts: 0, successes: 0, failures: 0, refused: 0 };
  /** Our address as peers observe it (from identify), newest last; only TCP/IPv4. */
  private readonly observed: string[] = [];
  private readonly inFlight = new Set<string>();

  constructor(private readonly d: PuncherDeps) {}

  private get upgrader(): { upgradeOutbound(c: MultiaddrConnection, o: object): Promise<Connection>; upgradeInbound(c: MultiaddrConnection, o: object): Promise<void> } {
    // libp2p exposes no public way to upgrade a socket a service made itself; its upgrader component does it.
    return (this.d.node as unknown as { components: { upgrader: HolePuncher['upgrader'] } }).components.upgrader;
  }

  async start(): Promise<void> {
    const node = this.d.node;
    await node.handle(DCUTR_PROTOCOL, (s, conn) => void this.asA(s, conn), { runOnLimitedConnection: true, maxInboundStreams: 32, maxOutboundStreams: 32 });
    node.addEventListener('peer:identify', (evt) => {
      const { observedAddr, connection } = evt.detail;
      if (!observedAddr || isRelayed(connection)) return;
      const ok = tcp4([observedAddr.bytes]);
      if (!ok.length) return;
      const s = `/ip4/${ok[0]!.host}/tcp/${ok[0]!.port}`;
      const i = this.observed.indexOf(s);
      if (i >= 0) this.observed.splice(i, 1);
      this.observed.push(s);
      if (this.observed.length > 4) this.observed.shift();
    });
    node.addEventListener('connection:open', (evt) => {
      const conn = evt.detail;
      if (conn.direction === 'inbound' && isRelayed(conn) && this.d.isBound(conn.remotePeer)) void this.asB(conn);
    });
  }

  /** Our observed addresses, as DCUtR sends them. */
  addresses(): string[] {
    return [...this.observed];
  }

  private hasDirect(peer: PeerId): boolean {
    return this.d.node.getConnections(peer).some((c) => c.status === 'open' && !isRelayed(c));
  }

  /** B: the relayed connection came in; drive the exchange and dial after rtt/2. */
  private async asB(relayed: Connection): Promise<void> {
    const peer = relayed.remotePeer;
    const key = peer.toString();
    if (this.inFlight.has(key)) return;
    this.inFlight.add(key);
    try {
      // Identify on the relayed connection runs first; give it a moment so the peer knows its own addresses.
      await Bun.sleep(200);
      for (let attempt = 1; attempt <= ATTEMPTS && !this.hasDirect(peer) && relayed.status === 'open'; attempt++) {
        if (this.observed.length === 0) {
          this.d.log.debug('hole punching skipped: no observed address yet', { peer: key });
          return;
        }
        this.stats.attempts++;
        const t0 = performance.now();
        let stream: Stream | undefined;
        try {
          const signal = AbortSignal.timeout(this.d.timeoutMs);
          stream = await relayed.newStream(DCUTR_PROTOCOL, { signal, runOnLimitedConnection: true });
          const clock = performance.now();
          stream.send(lengthPrefixed(encode(CONNECT, this.observed.map((a) => multiaddr(a).bytes))));
          const reply = decode(await readMessage(stream as unknown as MessageSource, MAX_MESSAGE, signal));
          if (reply.type !== CONNECT) throw new Error(`expected CONNECT, got ${reply.type}`);
          const targets = this.targets(reply.addrs);
          if (!targets.length) throw new Error('the peer sent no TCP/IPv4 address that may be dialed');
          const rtt = performance.now() - clock;
          stream.send(lengthPrefixed(encode(SYNC, [])));
          await Bun.sleep(rtt / 2);
          await this.dial(targets, 'inbound', peer, signal);
          this.stats.successes++;
          this.d.onPunched?.(peer, relayed, performance.now() - t0);
          return;
        } catch (e) {
          this.stats.failures++;
          this.d.log.debug('hole punch attempt failed', { peer: key, attempt, error: (e as Error).message });
        } finally {
          stream?.abort(new Error('dcutr done'));
        }
      }
    } finally {
      this.inFlight.delete(key);
    }
  }

  /** The addresses a punch may dial, of those a peer sent (see the header). */
  private targets(addrs: Uint8Array[]): { host: string; port: number }[] {
    return tcp4(addrs).filter((t) => punchable(t.host)).slice(0, MAX_TARGETS);
  }

  private refuse(stream: Stream, peer: PeerId, why: string): void {
    this.stats.refused++;
    this.d.log.warn('refused a hole-punch request', { peer: peer.toString(), reason: why });
    stream.abort(new Error(`hole punch refused: ${why}`));
  }

  /** A: answer with our addresses and dial as soon as SYNC arrives. */
  private async asA(stream: Stream, relayed: Connection): Promise<void> {
    const peer = relayed.remotePeer;
    if (!this.d.isBound(peer)) return this.refuse(stream, peer, 'the peer is not bound to any node in the catalog');
    if (!isRelayed(relayed)) return this.refuse(stream, peer, 'not a relayed connection (a direct one needs no punch)');
    const signal = AbortSignal.timeout(this.d.timeoutMs);
    const t0 = performance.now();
    this.stats.attempts++; // every exchange counts, so that failures never outnumber attempts
    try {
      const connect = decode(await readMessage(stream as unknown as MessageSource, MAX_MESSAGE, signal));
      if (connect.type !== CONNECT) throw new Error(`expected CONNECT, got ${connect.type}`);
      const targets = this.targets(connect.addrs);
      if (!targets.length) {
        this.stats.attempts--; // refused, not attempted
        return this.refuse(stream, peer, 'no address that may be dialed (loopback, link-local, multicast and non-IPv4 are never punched)');
      }
      stream.send(lengthPrefixed(encode(CONNECT, this.observed.map((a) => multiaddr(a).bytes))));
      const sync = decode(await readMessage(stream as unknown as MessageSource, MAX_MESSAGE, signal));
      if (sync.type !== SYNC) throw new Error(`expected SYNC, got ${sync.type}`);
      await this.dial(targets, 'outbound', peer, signal);
      this.stats.successes++;
      this.d.onPunched?.(peer, relayed, performance.now() - t0);
    } catch (e) {
      this.stats.failures++;
      this.d.log.debug('hole punch (as the dialed side) failed', { peer: peer.toString(), error: (e as Error).message });
      stream.abort(e as Error);
    }
  }

  /** Simultaneous open from the fixed port to each target in turn; upgrade with the spec's role. */
  private async dial(targets: { host: string; port: number }[], role: 'inbound' | 'outbound', peer: PeerId, signal: AbortSignal): Promise<void> {
    let last: Error = new Error('no targets');
    for (const t of targets) {
      let maConn: MultiaddrConnection | undefined;
      try {
        const remote: Multiaddr = multiaddr(`/ip4/${t.host}/tcp/${t.port}/p2p/${peer.toString()}`);
        maConn = await openConnection(t.host, t.port, role, { ...this.d.transport, connectTimeoutMs: Math.min(this.d.timeoutMs, 5000) }, this.d.node.logger.forComponent('edgemesh:punch'), signal, remote);
        if (role === 'outbound') await this.upgrader.upgradeOutbound(maConn, { signal, remotePeer: peer });
        else await this.upgrader.upgradeInbound(maConn, { signal });
        if (!this.hasDirect(peer)) throw new Error('the upgraded connection is not to the expected peer');
        return;
      } catch (e) {
        maConn?.abort(e as Error);
        last = e as Error;
      }
    }
    throw last;
  }
}
