/**
 * Interception: rules that send traffic for each service's cluster IPs (and external / load-balancer IPs) and
 * port to its listener, from processes on the node (OUTPUT) and from pods (PREROUTING). Always the full desired
 * set, applied atomically, so restarts never duplicate and a half-applied state never exists:
 *
 * - nftables: one table `ip edgemesh`, replaced in a single `nft -f` transaction. Its nat chains hook at
 *   priority -105, just before kube-proxy's (dstnat, -100), so edgemesh wins for the services it proxies;
 *   everything it does not match falls through to kube-proxy untouched.
 * - iptables: our own chains EDGEMESH-PORTALS-CONTAINER / -HOST in the nat table, rewritten with
 *   `iptables-restore --noflush` (declaring a chain flushes it), and one jump rule each from PREROUTING /
 *   OUTPUT, inserted first and only when missing. nft or legacy flavour: the one that already holds rules (as
 *   kube-proxy's iptables-wrapper decides), nft when neither does.
 * Stop removes everything: the table, or the jumps and the chains.
 */
import { EdgeMeshError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { PortMapping } from './index.ts';

export interface RulesBackend {
  readonly name: string;
  apply(ports: readonly PortMapping[]): Promise<void>;
  cleanup(): Promise<void>;
}

async function run(cmd: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn(cmd, { stdin: stdin === undefined ? 'ignore' : new TextEncoder().encode(stdin), stdout: 'pipe', stderr: 'pipe' });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out, err: err.trim() };
}

const v4 = (ip: string) => !ip.includes(':');
const quote = (s: string) => `"${s.replace(/["\\]/g, '')}"`;

/** Destination IPs a service port is reachable on (IPv4; IPv6 interception arrives with ip6 tables). */
function destinations(p: PortMapping): string[] {
  return [...new Set([...p.clusterIPs, ...p.externalIPs, ...p.loadBalancerIPs])].filter(v4);
}

export class NftablesRules implements RulesBackend {
  readonly name = 'nftables';
  constructor(private readonly log: Logger, readonly table = 'edgemesh') {}

  render(ports: readonly PortMapping[]): string {
    const lines = [`table ip ${this.table}`, `delete table ip ${this.table}`, `table ip ${this.table} {`, '  chain services {'];
    for (const p of ports) {
      const proto = p.protocol.toLowerCase();
      for (const ip of destinations(p)) lines.push(`    ip daddr ${ip} ${proto} dport ${p.port} counter dnat to ${p.listenHost}:${p.listenPort} comment ${quote(p.service)}`);
    }
    lines.push('  }');
    // -105: just before dstnat (-100), where kube-proxy's nat chains sit. Numeric because nft rejects the named
    // form on the output hook.
    lines.push('  chain prerouting {', '    type nat hook prerouting priority -105; policy accept;', '    jump services', '  }');
    lines.push('  chain output {', '    type nat hook output priority -105; policy accept;', '    jump services', '  }');
    lines.push('}');
    return lines.join('\n') + '\n';
  }

  async apply(ports: readonly PortMapping[]): Promise<void> {
    const r = await run(['nft', '-f', '-'], this.render(ports));
    if (r.code !== 0) throw new EdgeMeshError('INTERNAL', `nft -f failed: ${r.err}`);
    this.log.debug('nftables rules applied', { servicePorts: ports.length });
  }

  async cleanup(): Promise<void> {
    await run(['nft', 'delete', 'table', 'ip', this.table]);
  }
}

export class IptablesRules implements RulesBackend {
  readonly name: string;
  static readonly CHAINS = { container: 'EDGEMESH-PORTALS-CONTAINER', host: 'EDGEMESH-PORTALS-HOST' } as const;
  private jumps: [string, string][] = [['PREROUTING', IptablesRules.CHAINS.container], ['OUTPUT', IptablesRules.CHAINS.host]];

  /** `mode`: the iptables flavour, e.g. "nft" → iptables-nft, "legacy" → iptables-legacy, "" → iptables. */
  constructor(private readonly log: Logger, private readonly mode: '' | 'nft' | 'legacy') {
    this.name = `iptables${mode ? `-${mode}` : ''}`;
  }

  private jumpRule(to: string): string[] {
    return ['-m', 'comment', '--comment', 'edgemesh service portals', '-j', to];
  }

  private bin(tool: 'iptables' | 'iptables-restore'): string {
    return this.mode ? `${tool.replace('iptables', `iptables-${this.mode}`)}` : tool;
  }

  render(ports: readonly PortMapping[]): string {
    const { container, host } = IptablesRules.CHAINS;
    const lines = ['*nat', `:${container} - [0:0]`, `:${host} - [0:0]`];
    for (const p of ports) {
      const proto = p.protocol.toLowerCase();
      for (const ip of destinations(p)) {
        const match = `-d ${ip}/32 -p ${proto} -m ${proto} --dport ${p.port} -m comment --comment ${quote(p.service)} -j DNAT --to-destination ${p.listenHost}:${p.listenPort}`;
        lines.push(`-A ${container} ${match}`, `-A ${host} ${match}`);
      }
    }
    lines.push('COMMIT');
    return lines.join('\n') + '\n';
  }

  async apply(ports: readonly PortMapping[]): Promise<void> {
    const r = await run([this.bin('iptables-restore'), '--noflush', '-w', '5'], this.render(ports));
    if (r.code !== 0) throw new EdgeMeshError('INTERNAL', `${this.bin('iptables-restore')} failed: ${r.err}`);
    for (const [from, to] of this.jumps) {
      const check = await run([this.bin('iptables'), '-w', '5', '-t', 'nat', '-C', from, ...this.jumpRule(to)]);
      if (check.code !== 0) {
        const ins = await run([this.bin('iptables'), '-w', '5', '-t', 'nat', '-I', from, '1', ...this.jumpRule(to)]);
        if (ins.code !== 0) throw new EdgeMeshError('INTERNAL', `cannot add the ${from} jump: ${ins.err}`);
      }
    }
    this.log.debug('iptables rules applied', { servicePorts: ports.length });
  }

  async cleanup(): Promise<void> {
    for (const [from, to] of this.jumps) {
      // Remove every copy (an older version or a manual edit may have added more than one).
      while ((await run([this.bin('iptables'), '-w', '5', '-t', 'nat', '-D', from, ...this.jumpRule(to)])).code === 0);
    }
    for (const chain of Object.values(IptablesRules.CHAINS)) {
      await run([this.bin('iptables'), '-w', '5', '-t', 'nat', '-F', chain]);
      await run([this.bin('iptables'), '-w', '5', '-t', 'nat', '-X', chain]);
    }
  }
}

/** Which iptables flavour the node uses: the one holding more rules (iptables-wrapper's rule), nft if none. */
export async function detectIptablesMode(): Promise<'' | 'nft' | 'legacy'> {
  const has = (b: string) => !!Bun.which(b);
  if (!has('iptables-nft-save') || !has('iptables-legacy-save')) return '';
  const count = async (b: string) => (await run([b])).out.split('\n').filter((l) => l.startsWith('-A')).length;
  const [nft, legacy] = await Promise.all([count('iptables-nft-save'), count('iptables-legacy-save')]);
  return legacy > nft ? 'legacy' : 'nft';
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
