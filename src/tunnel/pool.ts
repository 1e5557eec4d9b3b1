/**
 * tunnel/ — the dialing side's session streams (session.ts): idle ones kept per peer and reused for the next
 * proxied connection to that peer, new ones opened when none is idle, and closed after SESSION_IDLE_MS unused.
 * After a hole punch, sessions left on the relayed connection are closed instead of reused.
 *
 *   const end = await pool.connect(target, peer, handlers, signal, firstBytes);   // FramedEnd, or throws
 */
import type { Connection, PeerId, Stream } from '@libp2p/interface';
import type { PipeHandlers, RemoteTarget } from '../dial/contract.ts';
import { EdgeMeshError } from '../errors.ts';
import { MsgType, encodeProxy, framedConnect } from './protocol.ts';
import { EARLY_MAX, type FramedEnd, SESSION_PROTOCOL, SESSION_PROTOCOL_EARLY, Session, type SessionHooks } from './session.ts';
import type { TunnelStats } from './status.ts';

/** An idle session stream is closed by its dialer after this long (by its receiver after twice this long). */
export const SESSION_IDLE_MS = 30_000;
/** Idle session streams kept per peer; more are closed when their connection ends. */
const MAX_IDLE_SESSIONS = 64;

/** The peer does not speak SESSION_PROTOCOL (an older edgemesh, the Go original). */
export class SessionsUnsupported extends Error {}

export interface PoolDeps {
  stats: TunnelStats;
  /** A new stream of the first protocol of the list that the peer speaks; throws SessionsUnsupported when it speaks none. */
  newStream(t: RemoteTarget, protocols: string[], signal: AbortSignal): Promise<Stream>;
  /** The connection new streams to `peer` take now (direct before relayed). */
  bestConnection(peer: PeerId): Connection | undefined;
}

export class SessionPool {
  /** Idle session streams per peer, newest last. */
  private readonly idle = new Map<string, Session[]>();
  /** Peers that do not speak sessions. */
  private readonly unsupported = new Set<string>();
  private sweep: ReturnType<typeof setInterval> | null = null;
  /** Encoded once per endpoint: the CONNECT's fields are the same for every connection to it. */
  private readonly connectCache = new Map<string, Uint8Array>();

  constructor(private readonly d: PoolDeps) {}

  /** Whether `peer` is known not to speak sessions (then one stream per connection, as before them). */
  speaksSessions(peer: PeerId): boolean {
    return !this.unsupported.has(peer.toString());
  }

  stop(): void {
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = null;
    for (const pool of this.idle.values()) for (const x of pool) x.close();
    this.idle.clear();
  }

  /**
   * A TCP connection on a session stream: an idle one to that peer when there is one, else a new one. A pooled
   * session that died while idle (its peer restarted, say) is replaced once. Throws SessionsUnsupported for a
   * peer without sessions (remembered).
   */
  async connect(t: RemoteTarget, peer: PeerId, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<FramedEnd> {
    const peerKey = peer.toString();
    for (let attempt = 0; ; attempt++) {
      const pooled = attempt === 0 ? this.take(peer) : null;
      let s = pooled;
      if (!s) {
        try {
          s = new Session(await this.d.newStream(t, [SESSION_PROTOCOL_EARLY, SESSION_PROTOCOL], signal), this.hooks(peerKey), 'idle');
        } catch (e) {
          if (e instanceof SessionsUnsupported) this.unsupported.add(peerKey);
          throw e;
        }
      }
      // 1.1 streams carry the first bytes with the CONNECT; on 1.0 the caller sends them once connected.
      const first = s.early && early?.length ? early.subarray(0, EARLY_MAX) : undefined;
      let end: FramedEnd | null;
      try {
        // The signal is checked when the reply comes, not listened to: an abort listener per connection cost ~2%
        // of the dialing agent's CPU. A caller that gave up has moved on (the proxy ignores a late pipe); the
        // reply always comes (the receiver answers FAILED once its connect attempts run out) or the stream dies.
        end = await s.connect(h, framedConnect(this.connectFields(t), first));
        if (signal.aborted) {
          s.kill(new Error('the proxied connection gave up'));
          throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
        }
      } catch (e) {
        if (pooled && !signal.aborted) continue;
        this.d.stats.dialFailures++;
        throw new EdgeMeshError('TUNNEL_DIAL', `no tunnel to node ${t.nodeName}: ${(e as Error).message}`, { cause: e });
      }
      if (!end) {
        this.d.stats.dialFailures++;
        throw new EdgeMeshError('TUNNEL_REFUSED', `node ${t.nodeName} could not connect ${t.protocol} ${t.ip}:${t.port}`);
      }
      this.d.stats.streamsOut++;
      end.sentEarly = first?.length ?? 0;
      return end;
    }
  }

  /** After a punch: idle sessions on the relayed connection are closed (they would keep it open). */
  closeOn(conn: Connection): void {
    for (const pool of this.idle.values()) for (const x of pool) if (conn.streams.includes(x.stream)) x.close();
  }

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

  private hooks(peerKey: string): SessionHooks {
    return {
      message: (s, msg) => s.answered(msg),
      released: (s) => {
        s.rest();
        const pool = this.idle.get(peerKey) ?? [];
        if (pool.length >= MAX_IDLE_SESSIONS || s.dead) {
          s.close();
          return;
        }
        pool.push(s);
        this.idle.set(peerKey, pool);
        this.sweep ??= setInterval(() => this.sweepIdle(), SESSION_IDLE_MS / 2);
        this.sweep.unref?.();
      },
      gone: (s) => {
        s.failWaiting(new Error('the session stream closed'));
        const pool = this.idle.get(peerKey);
        const i = pool?.indexOf(s) ?? -1;
        if (i >= 0) pool!.splice(i, 1);
      },
    };
  }

  /**
   * An idle session on the connection new streams would take now: after a punch that is the direct one, so
   * sessions left on the relayed connection are closed instead of reused.
   */
  private take(peer: PeerId): Session | null {
    const pool = this.idle.get(peer.toString());
    if (!pool?.length) return null;
    const best = this.d.bestConnection(peer);
    while (pool.length) {
      const s = pool.pop()!;
      const onBest = best !== undefined && best.streams.includes(s.stream);
      if (!s.dead && onBest && s.stream.status === 'open' && s.stream.writeStatus === 'writable') {
        this.d.stats.sessionReuses++;
        return s;
      }
      s.close();
    }
    return null;
  }

  /** Idle sessions older than SESSION_IDLE_MS are closed (the receiver closes them after twice that). */
  private sweepIdle(): void {
    const old = Date.now() - SESSION_IDLE_MS;
    for (const [key, pool] of this.idle) {
      for (const s of pool.filter((x) => x.lastUsed < old)) s.close();
      const live = pool.filter((x) => !x.dead);
      if (live.length) this.idle.set(key, live);
      else this.idle.delete(key);
    }
  }
}
