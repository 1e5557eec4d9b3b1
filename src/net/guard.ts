/**
 * net/ — the bridge guard: traffic addressed to the bridge IP (169.254.96.16: DNS, SOCKS5, service listeners)
 * is accepted only from the node itself and its pods.
 *
 * Linux accepts a packet for any of its addresses on any interface (the weak host model), so a LAN neighbour that
 * routes 169.254.96.16 to the node's LAN address reached every listener there; the original has the same
 * exposure. Pods reach the bridge IP from their veth or bridge interfaces and the node from loopback, never from
 * the LAN, so the guard drops packets for the bridge IP that arrive on an uplink: an interface that carries a
 * gateway route (the default route, say), or holds one of this node's InternalIP/ExternalIP addresses, or is listed
 * in `commonConfig.bridgeGuardInterfaces` (a LAN-only NIC). It matches the destination as it arrives, before any
 * DNAT (raw priority), so ClusterIP traffic the proxy redirects to a listener there is not affected.
 *
 * Interfaces and routes are re-read every 2 s from /proc/net/route and the interface list (no process spawned):
 * a NIC that comes up or gets the default route later is guarded within that time.
 *
 *   const g = new BridgeGuard({ ip: '169.254.96.16', bridgeDevice: 'edgemesh0', extra: [], nodeAddresses, logger, metrics })
 *   await g.start()   // applies the rule; polls for interface changes
 *   await g.stop()    // removes the rule
 */
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { EdgeMeshError, describeError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { MetricsRegistry } from '../obs/metrics.ts';
import { detectIptablesMode, iptablesBin, run } from './firewall.ts';

/** RTF_GATEWAY in /proc/net/route's Flags column: the route goes through a gateway. */
const RTF_GATEWAY = 0x2;
const POLL_MS = 2000;

/** Interfaces with a route through a gateway, from /proc/net/route's text. */
export function gatewayInterfaces(procNetRoute: string): string[] {
  const out = new Set<string>();
  for (const line of procNetRoute.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4) continue;
    if (parseInt(f[3]!, 16) & RTF_GATEWAY) out.add(f[0]!);
  }
  return [...out];
}

/** The interfaces to guard: gateway routes, interfaces holding one of `nodeAddresses`, and `extra`; never lo or the bridge. */
export function uplinks(opts: { procNetRoute: string; interfaces: ReturnType<typeof networkInterfaces>; nodeAddresses: readonly string[]; extra: readonly string[]; bridgeDevice: string }): string[] {
  const set = new Set<string>([...gatewayInterfaces(opts.procNetRoute), ...opts.extra]);
  const mine = new Set(opts.nodeAddresses);
  for (const [name, addrs] of Object.entries(opts.interfaces)) {
    // An alias label (eth0:1) is its device's name for the kernel's iifname.
    if ((addrs ?? []).some((a) => mine.has(a.address))) set.add(name.split(':')[0]!);
  }
  set.delete('lo');
  set.delete(opts.bridgeDevice);
  return [...set].filter((n) => /^[\w.@-]{1,15}$/.test(n)).sort();
}

export interface GuardBackend {
  readonly name: string;
  /** Drop packets for `ip` arriving on `interfaces` (the whole set; an empty set drops nothing). */
  apply(ip: string, interfaces: readonly string[]): Promise<void>;
  /** Packets dropped since this process first applied the rule. */
  dropped(): Promise<number>;
  cleanup(): Promise<void>;
}

/** nftables: table `ip edgemesh_guard`, a raw-priority prerouting chain and a named counter that survives rewrites. */
export class NftGuard implements GuardBackend {
  readonly name = 'nftables';
  private created = false;
  constructor(readonly table = 'edgemesh_guard') {}

  render(ip: string, interfaces: readonly string[], fresh: boolean): string {
    const t = this.table;
    const rule = interfaces.length ? [`add rule ip ${t} prerouting ip daddr ${ip} iifname { ${interfaces.map((i) => `"${i}"`).join(', ')} } counter name dropped drop`] : [];
    const head = fresh
      ? [`table ip ${t}`, `delete table ip ${t}`, `table ip ${t} {`, '  counter dropped {', '  }', '  chain prerouting {', '    type filter hook prerouting priority -300; policy accept;', '  }', '}']
      : [`flush chain ip ${t} prerouting`];
    return [...head, ...rule].join('\n') + '\n';
  }

  async apply(ip: string, interfaces: readonly string[]): Promise<void> {
    let r = await run(['nft', '-f', '-'], this.render(ip, interfaces, !this.created));
    if (r.code !== 0 && this.created) r = await run(['nft', '-f', '-'], this.render(ip, interfaces, true)); // someone deleted our table
    if (r.code !== 0) throw new EdgeMeshError('INTERNAL', `nft -f failed for the bridge guard: ${r.err}`);
    this.created = true;
  }

  async dropped(): Promise<number> {
    const r = await run(['nft', 'list', 'counter', 'ip', this.table, 'dropped']);
    return Number(/packets (\d+)/.exec(r.out)?.[1] ?? 0);
  }

  async cleanup(): Promise<void> {
    this.created = false;
    await run(['nft', 'delete', 'table', 'ip', this.table]);
  }
}

/** iptables: chain EDGEMESH-BRIDGE-GUARD in the raw table, jumped to from PREROUTING. */
export class IptablesGuard implements GuardBackend {
  readonly name: string;
  static readonly CHAIN = 'EDGEMESH-BRIDGE-GUARD';
  /** Counted by rules a rewrite has since replaced (restoring a chain zeroes its counters). */
  private base = 0;
  constructor(private readonly mode: '' | 'nft' | 'legacy') {
    this.name = `iptables${mode ? `-${mode}` : ''}`;
  }
  private readonly jump = ['-m', 'comment', '--comment', 'edgemesh bridge guard', '-j', IptablesGuard.CHAIN];

  render(ip: string, interfaces: readonly string[]): string {
    return ['*raw', `:${IptablesGuard.CHAIN} - [0:0]`, ...interfaces.map((i) => `-A ${IptablesGuard.CHAIN} -d ${ip}/32 -i ${i} -j DROP`), 'COMMIT'].join('\n') + '\n';
  }

  async apply(ip: string, interfaces: readonly string[]): Promise<void> {
    this.base += await this.current();
    const r = await run([iptablesBin('iptables-restore', this.mode), '--noflush', '-w', '5'], this.render(ip, interfaces));
    if (r.code !== 0) throw new EdgeMeshError('INTERNAL', `iptables-restore failed for the bridge guard: ${r.err}`);
    const ipt = iptablesBin('iptables', this.mode);
    if ((await run([ipt, '-w', '5', '-t', 'raw', '-C', 'PREROUTING', ...this.jump])).code !== 0) {
      const ins = await run([ipt, '-w', '5', '-t', 'raw', '-I', 'PREROUTING', '1', ...this.jump]);
      if (ins.code !== 0) throw new EdgeMeshError('INTERNAL', `cannot add the bridge guard's PREROUTING jump: ${ins.err}`);
    }
  }

  private async current(): Promise<number> {
    const r = await run([iptablesBin('iptables', this.mode), '-w', '5', '-t', 'raw', '-L', IptablesGuard.CHAIN, '-v', '-x', '-n']);
    if (r.code !== 0) return 0;
    let n = 0;
    for (const line of r.out.split('\n').slice(2)) n += Number(line.trim().split(/\s+/)[0]) || 0;
    return n;
  }

  async dropped(): Promise<number> {
    return this.base + (await this.current());
  }

  async cleanup(): Promise<void> {
    const ipt = iptablesBin('iptables', this.mode);
    while ((await run([ipt, '-w', '5', '-t', 'raw', '-D', 'PREROUTING', ...this.jump])).code === 0);
    await run([ipt, '-w', '5', '-t', 'raw', '-F', IptablesGuard.CHAIN]);
    await run([ipt, '-w', '5', '-t', 'raw', '-X', IptablesGuard.CHAIN]);
  }
}

/** nftables when the nft command is there, else iptables; null when neither is installed. */
export async function chooseGuardBackend(): Promise<GuardBackend | null> {
  if (Bun.which('nft')) return new NftGuard();
  if (Bun.which('iptables-restore')) return new IptablesGuard(await detectIptablesMode());
  return null;
}

export interface BridgeGuardDeps {
  ip: string;
  bridgeDevice: string;
  /** Interfaces always guarded (commonConfig.bridgeGuardInterfaces). */
  extra: readonly string[];
  /** This node's InternalIP/ExternalIP addresses, as the catalog knows them now. */
  nodeAddresses: () => readonly string[];
  logger: Logger;
  metrics: MetricsRegistry;
  backend: GuardBackend;
  /** Reads /proc/net/route (tests hand in their own). */
  readRoutes?: () => string;
  pollMs?: number;
}

export class BridgeGuard {
  private applied: string[] | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private busy: Promise<void> = Promise.resolve();
  private lastDropped = 0;
  private lastError: string | null = null;

  constructor(private readonly d: BridgeGuardDeps) {
    d.metrics.counterFrom('edgemesh_bridge_guard_dropped_total', `Packets for the bridge IP that arrived on an uplink interface and were dropped (the node and its pods only)`).set(() => this.lastDropped);
    d.metrics.gauge('edgemesh_bridge_guard_interfaces', 'Uplink interfaces on which the bridge guard drops traffic for the bridge IP').set(() => this.applied?.length ?? 0);
    d.metrics.beforeRender(async () => {
      if (this.applied) this.lastDropped = await this.d.backend.dropped();
    });
  }

  async start(): Promise<void> {
    await this.check();
    if (this.lastError) throw new EdgeMeshError('INTERNAL', `${this.lastError}; set commonConfig.bridgeGuard to "off" to run without it`);
    this.timer = setInterval(() => void this.check(), this.d.pollMs ?? POLL_MS);
    this.timer.unref?.();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.busy;
    if (this.applied) await this.d.backend.cleanup();
    this.applied = null;
  }

  status(): { backend: string; ip: string; interfaces: string[]; dropped: number; error: string | null } {
    return { backend: this.d.backend.name, ip: this.d.ip, interfaces: this.applied ?? [], dropped: this.lastDropped, error: this.lastError };
  }

  /** Re-reads interfaces and routes; rewrites the rule when the uplinks changed. One at a time. */
  private check(): Promise<void> {
    this.busy = this.busy.then(async () => {
      const want = uplinks({
        procNetRoute: this.d.readRoutes ? this.d.readRoutes() : readRoutes(),
        interfaces: networkInterfaces(),
        nodeAddresses: this.d.nodeAddresses(),
        extra: this.d.extra,
        bridgeDevice: this.d.bridgeDevice,
      });
      if (this.applied && want.join() === this.applied.join()) return;
      try {
        await this.d.backend.apply(this.d.ip, want);
        const first = this.applied === null;
        this.applied = want;
        this.lastError = null;
        this.d.logger.info(first ? 'bridge guard on' : 'bridge guard follows an interface change', {
          ip: this.d.ip,
          dropFrom: want.length ? want.join(',') : '(no uplink found yet)',
          backend: this.d.backend.name,
        });
      } catch (e) {
        this.lastError = describeError(e);
        this.d.logger.error('cannot apply the bridge guard', { error: this.lastError });
      }
    });
    return this.busy;
  }
}

function readRoutes(): string {
  try {
    return readFileSync('/proc/net/route', 'utf8');
  } catch {
    return '';
  }
}
