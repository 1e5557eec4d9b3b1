/**
 * proxy/conntrack — UDP conntrack entries that would outlive where a service port sends its traffic.
 *
 * A UDP client that keeps sending from one port (a syslog or statsd agent, a DNS stub, an IoT gateway) keeps its
 * conntrack entry alive for ever, and with it the DNAT target chosen for its first datagram: when that endpoint
 * leaves, the client would be blackholed until it went quiet for the UDP timeout (kube-proxy flushes these
 * entries for the same reason). TCP needs nothing: a removed endpoint's connections end by themselves, and new
 * ones are new entries.
 *
 * After each rule set is applied, every UDP service port whose allowed targets changed — its endpoints on the
 * kernel path, its listener otherwise — has its entries listed (`conntrack -L` by original destination) and
 * those answering from anywhere else deleted; a service port that is gone loses all of its entries. The first
 * sync after a start checks every UDP service port, so entries left from before a restart go too. Needs the
 * conntrack tool (conntrack-tools); without it UDP stays on the listener (index.ts decides). A tool that is there
 * but cannot list (no nf_conntrack_netlink in a restricted container, say) marks this `broken` on its first
 * failure, and UDP goes back to the listener too: a kernel path whose entries cannot be cleaned is the blackhole
 * this exists to prevent.
 *
 *   const ct = new UdpConntrack(logger)
 *   await ct.sync(mappings)   // after rules.apply(mappings)
 */
import type { Logger } from '../obs/logger.ts';
import type { PortMapping } from './mapping.ts';
import { run } from '../net/firewall.ts';
import { destinations } from './rules.ts';

/** The conntrack command, injectable for tests. */
export type ConntrackRun = (args: string[]) => Promise<{ code: number; out: string; err: string }>;

const runConntrack: ConntrackRun = (args) => run(['conntrack', ...args]);

interface Known {
  dests: string[];
  port: number;
  /** What the entries may answer from: "ip:port" of the endpoints (kernel) or of the listener. */
  allowed: string;
}

export class UdpConntrack {
  private known = new Map<string, Known>();
  /** Entries deleted since start (metrics). */
  deleted = 0;
  /** Why the tool cannot be used, once a listing failed; null while it works. */
  broken: string | null = null;

  constructor(private readonly log: Logger, private readonly run: ConntrackRun = runConntrack) {}

  /** Whether the conntrack tool is installed. */
  static available(): boolean {
    return !!Bun.which('conntrack');
  }

  /** Brings the kernel's UDP entries in line with `ports` (the rule set just applied); returns entries deleted. */
  async sync(ports: readonly PortMapping[]): Promise<number> {
    let deleted = 0;
    const now = new Map<string, Known>();
    for (const p of ports) {
      if (p.protocol !== 'UDP') continue;
      const targets = p.kernel ? p.kernel.endpoints.map((e) => `${e.ip}:${e.port}`) : [`${p.listenHost}:${p.listenPort}`];
      now.set(p.service, { dests: destinations(p), port: p.port, allowed: [...targets].sort().join(',') });
    }
    for (const [service, k] of now) {
      if (this.broken) break;
      const before = this.known.get(service);
      if (before && before.allowed === k.allowed && before.port === k.port && before.dests.join() === k.dests.join()) continue;
      const allowed = new Set(k.allowed.split(','));
      for (const ip of k.dests) deleted += await this.flushExcept(ip, k.port, allowed);
      // An address or port the service no longer has: nothing of it is allowed any more.
      for (const ip of before?.dests ?? []) if (before!.port !== k.port || !k.dests.includes(ip)) deleted += await this.flushExcept(ip, before!.port, new Set());
    }
    for (const [service, k] of this.known) {
      if (now.has(service)) continue;
      for (const ip of k.dests) deleted += await this.flushExcept(ip, k.port, new Set());
    }
    this.known = now;
    if (deleted) this.log.debug('deleted UDP conntrack entries that pointed elsewhere', { entries: deleted });
    this.deleted += deleted;
    return deleted;
  }

  /** Deletes the UDP entries to ip:port whose reply comes from a source not in `allowed`. */
  private async flushExcept(ip: string, port: number, allowed: Set<string>): Promise<number> {
    const list = await this.run(['-L', '-p', 'udp', '--orig-dst', ip, '--orig-port-dst', String(port)]);
    if (list.code !== 0) {
      if (!this.broken) this.log.warn('the conntrack tool cannot list entries: UDP services go back to the listener (entries made meanwhile expire when their clients go quiet)', { destination: `${ip}:${port}`, error: list.err || `exit ${list.code}` });
      this.broken = list.err || `exit ${list.code}`;
      return 0;
    }
    // A line: "udp 17 29 src=C dst=SVC sport=… dport=… [UNREPLIED] src=EP dst=C sport=EPPORT dport=… mark=0 use=1":
    // the second src= and sport= are where answers come from, i.e. the DNAT target.
    const stale = new Set<string>();
    for (const line of list.out.split('\n')) {
      const src = [...line.matchAll(/\bsrc=(\S+)/g)].map((m) => m[1]!);
      const sport = [...line.matchAll(/\bsport=(\d+)/g)].map((m) => m[1]!);
      if (src.length < 2 || sport.length < 2) continue;
      const from = `${src[1]}:${sport[1]}`;
      if (!allowed.has(from)) stale.add(from);
    }
    let deleted = 0;
    for (const from of stale) {
      const cut = from.lastIndexOf(':'); // an IPv6 listener address has colons of its own
      const [rip, rport] = [from.slice(0, cut), from.slice(cut + 1)];
      const r = await this.run(['-D', '-p', 'udp', '--orig-dst', ip, '--orig-port-dst', String(port), '--reply-src', rip, '--reply-port-src', rport]);
      // conntrack exits 1 when nothing matched (gone meanwhile); the count is on stderr.
      const n = Number(/(\d+) flow entr/.exec(r.err)?.[1] ?? 0);
      deleted += n;
    }
    return deleted;
  }
}
