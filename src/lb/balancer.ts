/**
 * lb/ — endpoint choice for one service port.
 *
 *   const b = new Balancer({ ring: { partitionCount: 100, replicationFactor: 10, load: 1.25 } })
 *   b.setEndpoints(endpoints); b.setPolicy(parsePolicy(rule.spec).policy, { enabled: false, timeoutSec: 0 })
 *   const ep = b.pick({ clientIP: '10.0.0.7' })          // null when there is none
 *   b.acquire(ep.key) … b.release(ep.key)                 // active connections, for least-request
 *
 * Default round robin over a shuffled list, as the original; Kubernetes `sessionAffinity: ClientIP` pins a client
 * IP to its endpoint for the timeout. A DestinationRule policy on a service with ClientIP affinity is ignored
 * with a warning, as in the original. Endpoint changes never touch established connections: they only change
 * what later picks see; affinity entries of removed endpoints are dropped.
 */
import { BoundedLoadRing, type RingConfig } from './ring.ts';
import { type LbPolicy, ROUND_ROBIN } from './policy.ts';

export interface LbEndpoint {
  /** `ip:port`, unique within the service port. */
  key: string;
  ip: string;
  port: number;
  nodeName: string;
  podName: string;
}

export interface PickContext {
  clientIP: string;
  /** The request's hash key (header, cookie or query value) when the policy hashes one; absent → round robin. */
  hashKey?: string;
  /** Endpoints that already failed for this connection (retries pick another). */
  exclude?: ReadonlySet<string>;
}

export interface SessionAffinity {
  enabled: boolean;
  timeoutSec: number;
}

export interface BalancerOptions {
  ring: RingConfig;
  random?: () => number;
  now?: () => number;
}

export class Balancer {
  private eps: LbEndpoint[] = [];
  private byKey = new Map<string, LbEndpoint>();
  private rr = 0;
  private readonly active = new Map<string, number>();
  private readonly affinity = new Map<string, { key: string; until: number }>();
  private policy: LbPolicy = ROUND_ROBIN;
  private sessionAffinity: SessionAffinity = { enabled: false, timeoutSec: 0 };
  private readonly ring: BoundedLoadRing;
  private readonly random: () => number;
  private readonly now: () => number;
  /** Why the configured policy is not in force, if it is not. */
  conflict: string | null = null;

  constructor(opts: BalancerOptions) {
    this.ring = new BoundedLoadRing(opts.ring);
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? (() => Date.now());
  }

  /**
   * Consistent hashing's partition table as endpoints (partition p → its endpoint), for rules that hash in the
   * kernel; null under any other policy.
   */
  partitionTable(): LbEndpoint[] | null {
    if (this.policy.kind !== 'consistent-hash') return null;
    const out: LbEndpoint[] = [];
    for (const key of this.ring.table()) {
      const ep = this.byKey.get(key);
      if (!ep) return null;
      out.push(ep);
    }
    return out;
  }

  endpoints(): readonly LbEndpoint[] {
    return this.eps;
  }

  /** The policy in force (round robin when ClientIP affinity overrides a DestinationRule). */
  effectivePolicy(): LbPolicy {
    return this.conflict ? ROUND_ROBIN : this.policy;
  }

  /**
   * Whether pick() reads `clientIP` (ClientIP affinity, source-IP hashing): a proxied connection asks the kernel
   * for its peer address (getpeername) only then.
   */
  usesClientIP(): boolean {
    const p = this.effectivePolicy();
    return this.sessionAffinity.enabled || (p.kind === 'consistent-hash' && p.hash.kind === 'source-ip');
  }

  setPolicy(policy: LbPolicy, affinity: SessionAffinity): void {
    this.policy = policy;
    this.sessionAffinity = affinity;
    this.conflict = affinity.enabled && policy.kind !== 'round-robin' ? `sessionAffinity: ClientIP conflicts with the DestinationRule's ${policy.kind} policy; using round robin with ClientIP affinity` : null;
    if (policy.kind === 'consistent-hash') this.ring.setMembers(this.eps.map((e) => e.key));
  }

  /** Replace the endpoints; a changed set is reshuffled (as the original) and the round-robin index reset. */
  setEndpoints(next: readonly LbEndpoint[]): void {
    const keys = new Set(next.map((e) => e.key));
    if (keys.size === this.byKey.size && [...keys].every((k) => this.byKey.has(k))) return;
    const list = [...new Map(next.map((e) => [e.key, e])).values()];
    for (let i = list.length - 1; i > 0; i--) {
      const j = Math.floor(this.random() * (i + 1));
      [list[i], list[j]] = [list[j]!, list[i]!];
    }
    this.eps = list;
    this.byKey = new Map(list.map((e) => [e.key, e]));
    this.rr = 0;
    for (const [ip, a] of this.affinity) if (!this.byKey.has(a.key)) this.affinity.delete(ip);
    if (this.policy.kind === 'consistent-hash') this.ring.setMembers(list.map((e) => e.key));
  }

  acquire(key: string): void {
    this.active.set(key, (this.active.get(key) ?? 0) + 1);
  }

  release(key: string): void {
    const n = (this.active.get(key) ?? 1) - 1;
    if (n <= 0) this.active.delete(key);
    else this.active.set(key, n);
  }

  activeCount(key: string): number {
    return this.active.get(key) ?? 0;
  }

  pick(ctx: PickContext): LbEndpoint | null {
    const ok = (e: LbEndpoint | undefined): e is LbEndpoint => !!e && !ctx.exclude?.has(e.key);
    if (!this.eps.some(ok)) return null;
    const policy = this.effectivePolicy();
    switch (policy.kind) {
      case 'random': {
        const c = ctx.exclude?.size ? this.eps.filter(ok) : this.eps;
        return c[Math.floor(this.random() * c.length)]!;
      }
      case 'least-request': {
        // Fewest active connections; ties go round robin so idle endpoints share the work.
        let best: LbEndpoint | null = null;
        let bestN = Infinity;
        for (let i = 0; i < this.eps.length; i++) {
          const e = this.eps[(this.rr + i) % this.eps.length]!;
          if (!ok(e)) continue;
          const n = this.activeCount(e.key);
          if (n < bestN) [best, bestN] = [e, n];
        }
        this.rr = (this.rr + 1) % this.eps.length;
        return best;
      }
      case 'consistent-hash': {
        const key = policy.hash.kind === 'source-ip' ? ctx.clientIP : ctx.hashKey;
        if (key !== undefined) {
          const e = this.byKey.get(this.ring.locate(key) ?? '');
          if (ok(e)) return e;
        }
        return this.nextRoundRobin(ok);
      }
      case 'round-robin': {
        if (!this.sessionAffinity.enabled) return this.nextRoundRobin(ok);
        const now = this.now();
        const a = this.affinity.get(ctx.clientIP);
        const pinned = a && a.until > now ? this.byKey.get(a.key) : undefined;
        const e = ok(pinned) ? pinned : this.nextRoundRobin(ok);
        if (e) this.affinity.set(ctx.clientIP, { key: e.key, until: now + this.sessionAffinity.timeoutSec * 1000 });
        return e;
      }
    }
  }

  private nextRoundRobin(ok: (e: LbEndpoint | undefined) => e is LbEndpoint): LbEndpoint | null {
    for (let i = 0; i < this.eps.length; i++) {
      const e = this.eps[this.rr]!;
      this.rr = (this.rr + 1) % this.eps.length;
      if (ok(e)) return e;
    }
    return null;
  }
}
