/**
 * Interception: rules that send traffic for each service's cluster IPs (and external / load-balancer IPs) and
 * port to its listener, from processes on the node (OUTPUT) and from pods (PREROUTING). Always the full desired
 * set, applied atomically, so restarts never duplicate and a half-applied state never exists:
 *
 * - nftables: one table `ip edgemesh`, rewritten in a single `nft -f` transaction: the first one of a process
 *   deletes and recreates it, later ones flush its rules and declare them again (sets keep their elements: the
 *   kernel's ClientIP affinity lives there) and delete chains and sets no longer wanted. Its nat chains hook at
 *   priority -105, just before kube-proxy's (dstnat, -100), so edgemesh wins for the services it proxies;
 *   everything it does not match falls through to kube-proxy untouched.
 * - iptables: our own chains EDGEMESH-PORTALS-CONTAINER / -HOST in the nat table, rewritten with
 *   `iptables-restore --noflush` (declaring a chain flushes it), and one jump rule each from PREROUTING /
 *   OUTPUT, inserted first and only when missing. nft or legacy flavour: the one that already holds rules (as
 *   kube-proxy's iptables-wrapper decides), nft when neither does.
 * Stop removes everything: the table, or the jumps and the chains.
 *
 * Kernel forwarding (PortMapping.kernel, chosen by the proxy): the service port's rules DNAT straight to its
 * endpoints instead of to the listener, round robin (`numgen inc` / `statistic nth`) or random, as kube-proxy
 * does; the kernel then carries the bytes with no copy through user space. From the node itself (OUTPUT) that is
 * all. Pods' connections (PREROUTING) are forwarded, so they get a conntrack mark (KERNEL_MARK) that lets them
 * through our FORWARD rule and masquerades them on the way out: the endpoint answers the node, which un-NATs the
 * reply (without it, an endpoint on the pod's own bridge would answer the pod directly from the wrong address).
 * ClientIP affinity on that path, as kube-proxy: one chain per endpoint that records the client address (an nft
 * set with a timeout / the `recent` match) before its DNAT, and the service chain first sends a recorded address
 * back to its endpoint, then picks round robin.
 */
import { EdgeMeshError } from '../errors.ts';
import { detectIptablesMode, iptablesBin, run } from '../net/firewall.ts';
import type { Logger } from '../obs/logger.ts';
import type { PortMapping } from './mapping.ts';

export interface RulesBackend {
  readonly name: string;
  /** Whether its rules can hash a client address into a table (nftables' jhash; iptables has no such match). */
  readonly hashesSourceAddress: boolean;
  apply(ports: readonly PortMapping[]): Promise<void>;
  cleanup(): Promise<void>;
}

const v4 = (ip: string) => !ip.includes(':');

/**
 * The conntrack mark bit of pods' kernel-forwarded connections. Clear of kube-proxy (0x4000 masquerade, 0x8000
 * drop), Calico (0xffff0000), Cilium (0x0f00) and Weave (0x20000, 0x40000).
 */
export const KERNEL_MARK = 0x2000;

/** A name for a service port's own chain: stable across restarts, ≤ 28 characters as iptables requires. */
function chainId(p: PortMapping): string {
  return shortHash(`${p.service}/${p.protocol}`).toUpperCase();
}
/** 12 hex characters of SHA-256: stable names for chains, sets and recent lists. */
const shortHash = (text: string): string => new Bun.CryptoHasher('sha256').update(text).digest('hex').slice(0, 12);
const quote = (s: string) => `"${s.replace(/["\\]/g, '')}"`;

/** A stable name part for one endpoint of a service port (affinity chains and sets). */
function endpointId(p: PortMapping, e: { ip: string; port: number }): string {
  return shortHash(`${p.service}/${p.protocol}/${e.ip}:${e.port}`);
}

/** Destination IPs a service port is reachable on (IPv4; IPv6 interception arrives with ip6 tables). */
export function destinations(p: PortMapping): string[] {
  return [...new Set([...p.clusterIPs, ...p.externalIPs, ...p.loadBalancerIPs])].filter(v4);
}

/** The chains and sets an nftables transaction left in our table (the next one deletes those it no longer wants). */
interface NftObjects {
  chains: Set<string>;
  sets: Set<string>;
}

export class NftablesRules implements RulesBackend {
  readonly name = 'nftables';
  readonly hashesSourceAddress = true;
  /** What this process last applied; null: nothing yet (the next apply starts from an empty table). */
  private applied: NftObjects | null = null;
  constructor(private readonly log: Logger, readonly table = 'edgemesh') {}

  /** The transaction, and the chains and sets it leaves. `previous` null: delete the table and start afresh. */
  render(ports: readonly PortMapping[], previous: NftObjects | null = null): { text: string; objects: NftObjects } {
    const mark = `0x${KERNEL_MARK.toString(16)}`;
    const host: string[] = [], pod: string[] = [], body: string[] = [];
    const objects: NftObjects = { chains: new Set(['services_host', 'services_pod', 'prerouting', 'output', 'postrouting', 'forward']), sets: new Set() };
    for (const p of ports) {
      const proto = p.protocol.toLowerCase();
      const comment = `comment ${quote(p.service)}`;
      const toListener = `dnat to ${p.listenHost}:${p.listenPort} ${comment}`;
      let toKernel = '';
      if (p.kernel) {
        const id = chainId(p).toLowerCase();
        const chain = `svc_${id}`;
        const eps = p.kernel.endpoints;
        const lines: string[] = [];
        // Several endpoints: a numgen lookup (map or vmap) picks one, and an unconditional rule to the first one
        // follows it. The lookup can miss while a rewrite commits (seen under load: 1 SYN in ~2,000 connections
        // during 30 rewrites, marked for the kernel path but not DNATed); such a connection is tracked without a
        // DNAT, escapes to the default route, and its retransmits (and any reuse of its source port for 120 s)
        // follow the same entry. The last unconditional DNAT of the iptables chains (and kube-proxy's) does the same.
        if (p.kernel.affinitySec > 0) {
          // Per endpoint: a set of client addresses (its timeout in the name: a changed timeout is a new set) and
          // a chain that refreshes the client's entry and DNATs.
          const T = p.kernel.affinitySec;
          const per = eps.map((e) => {
            const eid = endpointId(p, e).slice(0, 8);
            return { e, set: `aff_${id}_${eid}_${T}`, chain: `sep_${id}_${eid}` };
          });
          for (const x of per) {
            body.push(`  set ${x.set} {`, '    type ipv4_addr; flags dynamic,timeout;', `    timeout ${T}s;`, '  }');
            body.push(`  chain ${x.chain} {`, `    update @${x.set} { ip saddr }`, `    meta l4proto ${proto} counter dnat to ${x.e.ip}:${x.e.port} ${comment}`, '  }');
            objects.sets.add(x.set);
            objects.chains.add(x.chain);
            lines.push(`    ip saddr @${x.set} goto ${x.chain}`);
          }
          if (per.length > 1) lines.push(`    numgen inc mod ${per.length} vmap { ${per.map((x, i) => `${i} : goto ${x.chain}`).join(', ')} }`);
          lines.push(`    goto ${per[0]!.chain}`);
        } else {
          const first = `    meta l4proto ${proto} counter dnat to ${eps[0]!.ip}:${eps[0]!.port} ${comment}`;
          if (p.kernel.pick === 'source-hash' && p.kernel.partitions?.length) {
            // The client address hashed into the ring's partitions. A fixed seed (from the service port's name):
            // without one the kernel draws a random seed for every rule it loads, and each rewrite would move
            // every client.
            const parts = p.kernel.partitions;
            const map = parts.map((i, n) => `${n} : ${eps[i]!.ip} . ${eps[i]!.port}`).join(', ');
            lines.push(`    meta l4proto ${proto} counter dnat to jhash ip saddr mod ${parts.length} seed 0x${chainId(p).slice(0, 8).toLowerCase()} map { ${map} } ${comment}`);
          } else if (eps.length > 1) {
            const map = eps.map((e, i) => `${i} : ${e.ip} . ${e.port}`).join(', ');
            lines.push(`    meta l4proto ${proto} counter dnat to numgen ${p.kernel.pick === 'random' ? 'random' : 'inc'} mod ${eps.length} map { ${map} } ${comment}`);
          }
          lines.push(first);
        }
        body.push(`  chain ${chain} {`, ...lines, '  }');
        objects.chains.add(chain);
        toKernel = `jump ${chain}`;
      }
      for (const ip of destinations(p)) {
        const match = `    ip daddr ${ip} ${proto} dport ${p.port} counter`;
        host.push(`${match} ${p.kernel ? toKernel : toListener}`);
        pod.push(`${match} ${p.kernel?.pods ? `ct mark set ct mark | ${mark} ${toKernel}` : toListener}`);
      }
    }
    const t = this.table;
    // A first apply starts from nothing (whatever an earlier process left); later ones keep the sets' elements.
    const lines = previous ? [`table ip ${t}`, `flush table ip ${t}`, `table ip ${t} {`, ...body] : [`table ip ${t}`, `delete table ip ${t}`, `table ip ${t} {`, ...body];
    lines.push('  chain services_host {', ...host, '  }', '  chain services_pod {', ...pod, '  }');
    // -105: just before dstnat (-100), where kube-proxy's nat chains sit. Numeric because nft rejects the named
    // form on the output hook.
    lines.push('  chain prerouting {', '    type nat hook prerouting priority -105; policy accept;', '    jump services_pod', '  }');
    lines.push('  chain output {', '    type nat hook output priority -105; policy accept;', '    jump services_host', '  }');
    // Pods' kernel-forwarded connections: masqueraded on the way out, accepted by forward (an accept here cannot
    // override a drop policy in another table, e.g. iptables' FORWARD DROP: docs/proxy.md).
    lines.push('  chain postrouting {', '    type nat hook postrouting priority 95; policy accept;', `    ct mark & ${mark} == ${mark} masquerade`, '  }');
    lines.push('  chain forward {', '    type filter hook forward priority -5; policy accept;', `    ct mark & ${mark} == ${mark} accept`, '  }');
    lines.push('}');
    // Flushed above, so nothing refers to them any more.
    for (const c of previous?.chains ?? []) if (!objects.chains.has(c)) lines.push(`delete chain ip ${t} ${c}`);
    for (const x of previous?.sets ?? []) if (!objects.sets.has(x)) lines.push(`delete set ip ${t} ${x}`);
    return { text: lines.join('\n') + '\n', objects };
  }

  async apply(ports: readonly PortMapping[]): Promise<void> {
    let { text, objects } = this.render(ports, this.applied);
    let r = await run(['nft', '-f', '-'], text);
    if (r.code !== 0 && this.applied) {
      // Someone else changed our table (deleted it, say): start afresh, as the first apply does.
      ({ text, objects } = this.render(ports, null));
      r = await run(['nft', '-f', '-'], text);
    }
    if (r.code !== 0) {
      this.applied = null;
      throw new EdgeMeshError('INTERNAL', `nft -f failed: ${r.err}`);
    }
    this.applied = objects;
    this.log.debug('nftables rules applied', { servicePorts: ports.length });
  }

  async cleanup(): Promise<void> {
    this.applied = null;
    await run(['nft', 'delete', 'table', 'ip', this.table]);
  }
}

export class IptablesRules implements RulesBackend {
  readonly name: string;
  readonly hashesSourceAddress = false;
  static readonly CHAINS = { container: 'EDGEMESH-PORTALS-CONTAINER', host: 'EDGEMESH-PORTALS-HOST', postrouting: 'EDGEMESH-POSTROUTING', forward: 'EDGEMESH-FORWARD' } as const;
  /** A kernel-forwarded service port's own chain (shared by both portals, so its round-robin counters are one). */
  static readonly SVC_PREFIX = 'EDGEMESH-SVC-';
  /** With ClientIP affinity, one chain per endpoint (and a `recent` list of the same name). */
  static readonly SEP_PREFIX = 'EDGEMESH-SEP-';
  private readonly jumps: { table: 'nat' | 'filter'; from: string; to: string }[] = [
    { table: 'nat', from: 'PREROUTING', to: IptablesRules.CHAINS.container },
    { table: 'nat', from: 'OUTPUT', to: IptablesRules.CHAINS.host },
    { table: 'nat', from: 'POSTROUTING', to: IptablesRules.CHAINS.postrouting },
    { table: 'filter', from: 'FORWARD', to: IptablesRules.CHAINS.forward },
  ];

  /** `mode`: the iptables flavour, e.g. "nft" → iptables-nft, "legacy" → iptables-legacy, "" → iptables. */
  constructor(private readonly log: Logger, private readonly mode: '' | 'nft' | 'legacy') {
    this.name = `iptables${mode ? `-${mode}` : ''}`;
  }

  private jumpRule(to: string): string[] {
    return ['-m', 'comment', '--comment', 'edgemesh service portals', '-j', to];
  }

  private bin(tool: 'iptables' | 'iptables-restore' | 'iptables-save'): string {
    return iptablesBin(tool, this.mode);
  }

  /** The restore input; `stale` are service chains of an earlier set, deleted in the same transaction. */
  render(ports: readonly PortMapping[], stale: readonly string[] = []): string {
    const { container, host, postrouting, forward } = IptablesRules.CHAINS;
    const mark = `0x${KERNEL_MARK.toString(16)}`;
    const rules: string[] = [], svcChains: string[] = [];
    for (const p of ports) {
      const proto = p.protocol.toLowerCase();
      const comment = `-m comment --comment ${quote(p.service)}`;
      const toListener = `-j DNAT --to-destination ${p.listenHost}:${p.listenPort}`;
      let chain = '';
      if (p.kernel) {
        chain = IptablesRules.SVC_PREFIX + chainId(p);
        svcChains.push(chain);
        const eps = p.kernel.endpoints;
        const T = p.kernel.affinitySec;
        // ClientIP affinity: an address seen within T seconds goes back to its endpoint's chain, which records it.
        const seps = T > 0 ? eps.map((e) => IptablesRules.SEP_PREFIX + endpointId(p, e).toUpperCase()) : [];
        for (const sep of seps) rules.push(`-A ${chain} -p ${proto} ${comment} -m recent --name ${sep} --rcheck --seconds ${T} --reap -j ${sep}`);
        eps.forEach((e, i) => {
          const left = eps.length - i;
          // nth: of the connections reaching this rule, one in `left` (round robin); random: probability 1/left.
          const pick = left === 1 ? '' : p.kernel!.pick === 'random' ? `-m statistic --mode random --probability ${(1 / left).toFixed(10)} ` : `-m statistic --mode nth --every ${left} --packet 0 `;
          const sep = seps[i];
          if (sep) {
            svcChains.push(sep);
            rules.push(`-A ${chain} -p ${proto} ${comment} ${pick}-j ${sep}`);
            rules.push(`-A ${sep} -p ${proto} ${comment} -m recent --name ${sep} --set -j DNAT --to-destination ${e.ip}:${e.port}`);
          } else {
            rules.push(`-A ${chain} -p ${proto} ${comment} ${pick}-j DNAT --to-destination ${e.ip}:${e.port}`);
          }
        });
      }
      for (const ip of destinations(p)) {
        const match = `-d ${ip}/32 -p ${proto} -m ${proto} --dport ${p.port} ${comment}`;
        rules.push(`-A ${host} ${match} ${chain ? `-j ${chain}` : toListener}`);
        if (p.kernel?.pods) rules.push(`-A ${container} ${match} -j CONNMARK --or-mark ${mark}`, `-A ${container} ${match} -j ${chain}`);
        else rules.push(`-A ${container} ${match} ${toListener}`);
      }
    }
    const desired = new Set(svcChains);
    const gone = stale.filter((c) => !desired.has(c));
    const lines = ['*nat', ...[container, host, postrouting, ...svcChains, ...gone].map((c) => `:${c} - [0:0]`), ...rules];
    lines.push(`-A ${postrouting} -m connmark --mark ${mark}/${mark} -j MASQUERADE`);
    for (const c of gone) lines.push(`-X ${c}`);
    lines.push('COMMIT', '*filter', `:${forward} - [0:0]`, `-A ${forward} -m connmark --mark ${mark}/${mark} -j ACCEPT`, 'COMMIT');
    return lines.join('\n') + '\n';
  }

  /** Our service chains now in the nat table. */
  private async serviceChains(): Promise<string[]> {
    const r = await run([this.bin('iptables-save'), '-t', 'nat']);
    return r.out.split('\n').filter((l) => l.startsWith(`:${IptablesRules.SVC_PREFIX}`) || l.startsWith(`:${IptablesRules.SEP_PREFIX}`)).map((l) => l.slice(1).split(' ')[0]!);
  }

  async apply(ports: readonly PortMapping[]): Promise<void> {
    const r = await run([this.bin('iptables-restore'), '--noflush', '-w', '5'], this.render(ports, await this.serviceChains()));
    if (r.code !== 0) throw new EdgeMeshError('INTERNAL', `${this.bin('iptables-restore')} failed: ${r.err}`);
    for (const { table, from, to } of this.jumps) {
      const check = await run([this.bin('iptables'), '-w', '5', '-t', table, '-C', from, ...this.jumpRule(to)]);
      if (check.code !== 0) {
        const ins = await run([this.bin('iptables'), '-w', '5', '-t', table, '-I', from, '1', ...this.jumpRule(to)]);
        if (ins.code !== 0) throw new EdgeMeshError('INTERNAL', `cannot add the ${from} jump: ${ins.err}`);
      }
    }
    this.log.debug('iptables rules applied', { servicePorts: ports.length });
  }

  async cleanup(): Promise<void> {
    for (const { table, from, to } of this.jumps) {
      // Remove every copy (an older version or a manual edit may have added more than one).
      while ((await run([this.bin('iptables'), '-w', '5', '-t', table, '-D', from, ...this.jumpRule(to)])).code === 0);
    }
    const { container, host, postrouting, forward } = IptablesRules.CHAINS;
    const chains = [['nat', container], ['nat', host], ['nat', postrouting], ['filter', forward], ...(await this.serviceChains()).map((c) => ['nat', c])] as const;
    // Flush all before deleting any: the portals jump to the service chains, which cannot go while referenced.
    for (const [table, chain] of chains) await run([this.bin('iptables'), '-w', '5', '-t', table, '-F', chain]);
    for (const [table, chain] of chains) await run([this.bin('iptables'), '-w', '5', '-t', table, '-X', chain]);
  }
}

/** The backend for `edgeProxy.interception`, or null for none (or auto without root). */
export async function chooseRules(mode: 'auto' | 'iptables' | 'nftables' | 'none', log: Logger): Promise<RulesBackend | null> {
  if (mode === 'none') return null;
  const root = process.getuid?.() === 0;
  if (mode === 'auto' && !root) {
    log.info('not root: no interception rules; service ports are reachable on their listener ports (edgemesh status)');
    return null;
  }
  if (mode === 'nftables' || (mode === 'auto' && Bun.which('nft'))) {
    if (!Bun.which('nft')) throw new EdgeMeshError('CONFIG_INVALID', 'modules.edgeProxy.interception: "nftables" needs the nft command (apt-get install nftables)');
    return new NftablesRules(log);
  }
  if (!Bun.which('iptables-restore')) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeProxy.interception: "${mode}" needs iptables or nft (apt-get install iptables), or set it to "none"`);
  return new IptablesRules(log, await detectIptablesMode());
}
