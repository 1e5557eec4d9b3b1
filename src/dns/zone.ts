/**
 * The cluster zone, built from the catalog: the names a Kubernetes user expects from CoreDNS's kubernetes plugin.
 *
 *   <svc>.<ns>.svc.<domain>             A/AAAA → cluster IPs; headless → ready endpoint IPs; ExternalName → CNAME
 *   <host>.<svc>.<ns>.svc.<domain>      A/AAAA of a headless endpoint (hostname, or the IP with dashes)
 *   _<port>._<proto>.<svc>.<ns>.svc...  SRV (and SRV on the service name: every named port)
 *   <a-b-c-d>.<ns>.pod.<domain>         A (answered without verification, like `pods insecure`)
 *   reverse names of cluster and endpoint IPs → PTR; other reverse names are not ours (forwarded)
 *
 * A missing name under the domain is NXDOMAIN with the SOA; an existing name (including empty non-terminals
 * such as `<ns>.svc.<domain>`) asked for another type is NODATA with the SOA. All names are lower case.
 */
import { isIP } from 'node:net';
import type { Answer, SoaAnswer, SrvAnswer } from 'dns-packet';
import type { CatalogSnapshot } from '../catalog/catalog.ts';
import type { Endpoint, Service } from '../catalog/model.ts';
import { TYPE } from './wire.ts';

export interface ZoneAnswer {
  rcode: 'NOERROR' | 'NXDOMAIN';
  answers: Answer[];
  authorities: Answer[];
  additionals: Answer[];
}

interface Srv {
  priority: number;
  weight: number;
  port: number;
  target: string;
}

/** IPv4 `10.0.0.1` → `1.0.0.10.in-addr.arpa`; IPv6 → nibble form under ip6.arpa. */
export function reverseName(ip: string): string {
  if (isIP(ip) === 4) return ip.split('.').reverse().join('.') + '.in-addr.arpa';
  const parts = ip.split('::');
  const head = parts[0] ? parts[0].split(':') : [];
  const tail = parts[1] ? parts[1].split(':') : [];
  const groups = parts.length === 2 ? [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail] : head;
  const hex = groups.map((g) => g.padStart(4, '0')).join('').toLowerCase();
  return hex.split('').reverse().join('.') + '.ip6.arpa';
}

/** The name an endpoint gets under its service: its hostname, else its IP with dashes (CoreDNS). */
function endpointLabel(e: Endpoint): string {
  return (e.hostname || e.ip.replaceAll('.', '-').replaceAll(':', '-')).toLowerCase();
}

export class Zone {
  readonly domain: string;
  private a = new Map<string, string[]>();
  private aaaa = new Map<string, string[]>();
  private cname = new Map<string, string>();
  private srv = new Map<string, Srv[]>();
  private ptr = new Map<string, string[]>();
  /** Every name that exists, including empty non-terminals. */
  private names = new Set<string>();
  private soa: SoaAnswer;
  serial = 1;

  constructor(domain: string, readonly ttl: number) {
    this.domain = domain.toLowerCase().replace(/\.$/, '');
    this.soa = this.makeSoa();
  }

  private makeSoa(): SoaAnswer {
    return {
      name: this.domain, type: 'SOA', class: 'IN', ttl: this.ttl,
      data: { mname: `ns.dns.${this.domain}`, rname: `hostmaster.${this.domain}`, serial: this.serial, refresh: 7200, retry: 1800, expire: 86400, minimum: this.ttl },
    };
  }

  /** Rebuild from a catalog snapshot (O(services + endpoints); a few ms for thousands of services). */
  rebuild(snap: CatalogSnapshot): void {
    this.a = new Map();
    this.aaaa = new Map();
    this.cname = new Map();
    this.srv = new Map();
    this.ptr = new Map();
    this.names = new Set([this.domain, `svc.${this.domain}`, `pod.${this.domain}`]);
    for (const svc of snap.services.values()) this.addService(svc, snap.endpoints.get(`${svc.namespace}/${svc.name}`)?.endpoints ?? []);
    this.serial = (this.serial % 0xfffffff0) + 1;
    this.soa = this.makeSoa();
  }

  private addName(name: string): void {
    // The name and every ancestor down to the domain exist (ancestors as empty non-terminals).
    for (let n = name; n.length > this.domain.length && !this.names.has(n); n = n.slice(n.indexOf('.') + 1)) this.names.add(n);
  }

  private push<V extends string | Srv>(m: Map<string, V[]>, k: string, v: V): void {
    const l = m.get(k);
    const same = (x: V) => (typeof x === 'string' ? x === v : x.target === (v as Srv).target && x.port === (v as Srv).port);
    if (!l) m.set(k, [v]);
    else if (!l.some(same)) l.push(v);
  }

  private addIP(name: string, ip: string): void {
    this.push(isIP(ip) === 6 ? this.aaaa : this.a, name, ip);
    this.addName(name);
  }

  private addService(svc: Service, endpoints: Endpoint[]): void {
    const base = `${svc.name}.${svc.namespace}.svc.${this.domain}`.toLowerCase();
    this.addName(base);
    if (svc.type === 'ExternalName') {
      if (svc.externalName) this.cname.set(base, svc.externalName.toLowerCase().replace(/\.$/, ''));
      return;
    }
    const ready = endpoints.filter((e) => e.ready);
    if (svc.headless) {
      for (const e of ready) {
        const host = `${endpointLabel(e)}.${base}`;
        this.addIP(base, e.ip);
        this.addIP(host, e.ip);
        this.push(this.ptr, reverseName(e.ip), host);
      }
    } else {
      for (const ip of svc.clusterIPs) {
        this.addIP(base, ip);
        this.push(this.ptr, reverseName(ip), base);
      }
    }
    for (const p of svc.ports) {
      if (!p.name) continue;
      const srvName = `_${p.name}._${p.protocol.toLowerCase()}.${base}`.toLowerCase();
      this.addName(srvName);
      if (svc.headless) {
        const targets = ready.filter((e) => e.ports.some((ep) => ep.name === p.name));
        for (const e of targets) {
          const port = e.ports.find((ep) => ep.name === p.name)!.port;
          const rec: Srv = { priority: 0, weight: Math.max(1, Math.floor(100 / targets.length)), port, target: `${endpointLabel(e)}.${base}` };
          this.push(this.srv, srvName, rec);
          this.push(this.srv, base, rec);
        }
      } else if (svc.clusterIPs.length) {
        const rec: Srv = { priority: 0, weight: 100, port: p.port, target: base };
        this.push(this.srv, srvName, rec);
        this.push(this.srv, base, rec);
      }
    }
  }

  /** Whether a (lower-case) name is ours to answer. Reverse names only when we know the IP. */
  owns(name: string): boolean {
    if (name === this.domain || name.endsWith(`.${this.domain}`)) return true;
    return (name.endsWith('.in-addr.arpa') || name.endsWith('.ip6.arpa')) && this.ptr.has(name);
  }

  /** Answer a question for a name this zone owns. */
  lookup(name: string, qtype: number): ZoneAnswer {
    const ttl = this.ttl;
    const out: ZoneAnswer = { rcode: 'NOERROR', answers: [], authorities: [], additionals: [] };
    const ptrs = this.ptr.get(name);
    if (ptrs) {
      if (qtype === TYPE.PTR || qtype === TYPE.ANY) for (const p of ptrs) out.answers.push({ name, type: 'PTR', class: 'IN', ttl, data: p });
      if (!out.answers.length) out.authorities.push(this.soa);
      return out;
    }
    const pod = this.podAddress(name);
    const cname = this.cname.get(name);
    const exists = pod !== null || this.names.has(name);
    if (!exists) {
      out.rcode = 'NXDOMAIN';
      out.authorities.push(this.soa);
      return out;
    }
    if (cname) {
      out.answers.push({ name, type: 'CNAME', class: 'IN', ttl, data: cname });
      return out;
    }
    const v4 = pod !== null ? (isIP(pod) === 4 ? [pod] : []) : this.a.get(name);
    const v6 = pod !== null ? (isIP(pod) === 6 ? [pod] : []) : this.aaaa.get(name);
    switch (qtype) {
      case TYPE.A:
        for (const ip of v4 ?? []) out.answers.push({ name, type: 'A', class: 'IN', ttl, data: ip });
        break;
      case TYPE.AAAA:
        for (const ip of v6 ?? []) out.answers.push({ name, type: 'AAAA', class: 'IN', ttl, data: ip });
        break;
      case TYPE.ANY:
        // RFC 8482: a minimal answer, not everything we have.
        if (v4?.length) out.answers.push({ name, type: 'A', class: 'IN', ttl, data: v4[0]! });
        else if (v6?.length) out.answers.push({ name, type: 'AAAA', class: 'IN', ttl, data: v6[0]! });
        break;
      case TYPE.SRV: {
        const recs = this.srv.get(name) ?? [];
        for (const r of recs) out.answers.push({ name, type: 'SRV', class: 'IN', ttl, data: { ...r } } as SrvAnswer);
        const seen = new Set<string>();
        for (const r of recs) {
          if (seen.has(r.target)) continue;
          seen.add(r.target);
          for (const ip of this.a.get(r.target) ?? []) out.additionals.push({ name: r.target, type: 'A', class: 'IN', ttl, data: ip });
          for (const ip of this.aaaa.get(r.target) ?? []) out.additionals.push({ name: r.target, type: 'AAAA', class: 'IN', ttl, data: ip });
        }
        break;
      }
      case TYPE.SOA:
        if (name === this.domain) out.answers.push(this.soa);
        break;
      case TYPE.NS:
        if (name === this.domain) out.answers.push({ name, type: 'NS', class: 'IN', ttl, data: `ns.dns.${this.domain}` });
        break;
    }
    if (!out.answers.length) out.authorities.push(this.soa);
    return out;
  }

  /** `a-b-c-d.<ns>.pod.<domain>` → the address, or null. */
  private podAddress(name: string): string | null {
    const suffix = `.pod.${this.domain}`;
    if (!name.endsWith(suffix)) return null;
    const labels = name.slice(0, -suffix.length).split('.');
    if (labels.length !== 2) return null;
    const v4 = labels[0]!.replaceAll('-', '.');
    if (isIP(v4) === 4) return v4;
    const v6 = labels[0]!.replaceAll('-', ':');
    return isIP(v6) === 6 ? v6 : null;
  }

  stats(): { names: number; a: number; aaaa: number; srv: number; ptr: number } {
    return { names: this.names.size, a: this.a.size, aaaa: this.aaaa.size, srv: this.srv.size, ptr: this.ptr.size };
  }
}
