/**
 * tunnel/ — admission of inbound TCP connections before they cost a handshake. libp2p itself allows 10
 * connections in the whole node to wait for their handshake, each for up to handshakeTimeoutMs (10 s): ten idle
 * sockets from anyone (no PSK needed) kept every other peer out, which on a relay cuts off every node behind NAT.
 *
 * Here, per source address: at most `perAddress` connections waiting for their handshake; in all, at most
 * `total` from addresses the catalog does not know; addresses of catalog nodes (their InternalIP/ExternalIP,
 * tunnel-addresses, relay addresses) are always admitted. A connection that sends nothing within
 * `firstBytesMs` (a real dialer speaks at once: multistream-select, or pnet's nonce) is closed. Every refusal is
 * counted by reason (edgemesh_tunnel_admission_refused_total{reason}). libp2p's own limits stay behind these
 * (its global pending limit raised to `total` plus room for known nodes; its per-address rate limit kept).
 *
 *   const adm = new Admission({ trusted: (ip) => peers.isNodeAddress(ip) });
 *   const ticket = adm.admit(ip);   // null: refused (counted); else ticket.spoke() on the first bytes, ticket.done() after the upgrade
 */

export interface AdmissionOptions {
  /** Whether `ip` is the address of a node in the catalog (always admitted). */
  trusted: (ip: string) => boolean;
  /** Connections waiting for their handshake per source address (default 4). */
  perAddress?: number;
  /** Connections waiting for their handshake from unknown addresses, in all (default 64). */
  total?: number;
  /** Close a connection that sent nothing for this long (default 2,000 ms). */
  firstBytesMs?: number;
}

export type RefusalReason = 'per-address' | 'total' | 'silent';

export interface Ticket {
  /** The connection sent its first bytes. */
  spoke(): void;
  /** Its handshake finished (or it closed): it no longer counts as waiting. */
  done(): void;
}

interface Waiting {
  ip: string;
  trusted: boolean;
  since: number;
  spoken: boolean;
  kill: () => void;
}

export class Admission {
  readonly perAddress: number;
  readonly total: number;
  readonly firstBytesMs: number;
  readonly refused: Record<RefusalReason, number> = { 'per-address': 0, total: 0, silent: 0 };
  private readonly byAddress = new Map<string, number>();
  private untrusted = 0;
  private readonly waiting = new Set<Waiting>();
  private sweep: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly o: AdmissionOptions) {
    this.perAddress = o.perAddress ?? 4;
    this.total = o.total ?? 64;
    this.firstBytesMs = o.firstBytesMs ?? 2000;
  }

  /** Connections waiting for their handshake now. */
  get pending(): number {
    return this.waiting.size;
  }

  /** Admit a new inbound connection from `ip` (`kill` closes it), or refuse it (null, counted). */
  admit(ip: string, kill: () => void): Ticket | null {
    const trusted = this.o.trusted(ip);
    if (!trusted) {
      if ((this.byAddress.get(ip) ?? 0) >= this.perAddress) {
        this.refused['per-address']++;
        return null;
      }
      if (this.untrusted >= this.total) {
        this.refused.total++;
        return null;
      }
      this.byAddress.set(ip, (this.byAddress.get(ip) ?? 0) + 1);
      this.untrusted++;
    }
    const w: Waiting = { ip, trusted, since: Date.now(), spoken: false, kill };
    this.waiting.add(w);
    this.armSweep();
    return {
      spoke: () => {
        w.spoken = true;
      },
      done: () => this.release(w),
    };
  }

  stop(): void {
    if (this.sweep) clearInterval(this.sweep);
    this.sweep = null;
  }

  private release(w: Waiting): void {
    if (!this.waiting.delete(w) || w.trusted) return;
    this.untrusted--;
    const n = (this.byAddress.get(w.ip) ?? 1) - 1;
    if (n > 0) this.byAddress.set(w.ip, n);
    else this.byAddress.delete(w.ip);
  }

  /** One timer for all waiting connections, running only while some have not spoken yet. */
  private armSweep(): void {
    if (this.sweep) return;
    this.sweep = setInterval(() => {
      const old = Date.now() - this.firstBytesMs;
      let silent = 0;
      for (const w of this.waiting) {
        if (w.spoken) continue;
        silent++;
        if (w.since > old) continue;
        this.refused.silent++;
        this.release(w);
        w.kill();
      }
      if (silent === 0 && this.sweep) {
        clearInterval(this.sweep);
        this.sweep = null;
      }
    }, Math.max(50, Math.min(500, this.firstBytesMs / 4)));
    this.sweep.unref?.();
  }
}
