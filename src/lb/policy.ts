/**
 * Load-balancing policies from istio DestinationRules (networking.istio.io v1alpha3 and v1beta1), and which
 * rule applies to which service. Parsing never throws: an unsupported or malformed policy is a warning and
 * round robin (the original panics on those: its issues #463 and #472).
 */
import type { IstioObject, JsonObject, JsonValue, Service } from '../catalog/model.ts';

export type HashSource =
  | { kind: 'header'; name: string }
  | { kind: 'cookie'; name: string; path: string; ttlSeconds: number }
  | { kind: 'source-ip' }
  | { kind: 'query'; name: string };

export type LbPolicy =
  | { kind: 'round-robin' }
  | { kind: 'random' }
  | { kind: 'least-request' }
  | { kind: 'consistent-hash'; hash: HashSource };

export const ROUND_ROBIN: LbPolicy = { kind: 'round-robin' };

/** The policy as `edgemesh status` and /debug/proxy show it: its kind, and for hashing what is hashed. */
export function describePolicy(p: LbPolicy): string {
  if (p.kind !== 'consistent-hash') return p.kind;
  const h = p.hash;
  return `consistent-hash by ${h.kind === 'source-ip' ? 'source address' : h.kind === 'query' ? `query parameter ${h.name}` : `${h.kind} ${h.name}`}`;
}

const isObj = (v: JsonValue | undefined): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

/** istio durations: "10s", "1.5h", "500ms", "1m30s". */
export function parseDuration(v: JsonValue | undefined): number | null {
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'string') return null;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let total = 0, matched = '';
  for (let m; (m = re.exec(v)); ) {
    total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] as 'ms' | 's' | 'm' | 'h'];
    matched += m[0];
  }
  return matched === v && v !== '' ? total : null;
}

/** The policy of a DestinationRule spec; `warning` says why a policy was not applied as written. */
export function parsePolicy(spec: JsonObject): { policy: LbPolicy; warning?: string } {
  const tp = spec.trafficPolicy;
  if (tp === undefined) return { policy: ROUND_ROBIN, warning: 'no trafficPolicy; using round robin' };
  if (!isObj(tp)) return { policy: ROUND_ROBIN, warning: 'trafficPolicy is not an object; using round robin' };
  const lb = tp.loadBalancer;
  if (lb === undefined) return { policy: ROUND_ROBIN, warning: 'no trafficPolicy.loadBalancer; using round robin' };
  if (!isObj(lb)) return { policy: ROUND_ROBIN, warning: 'trafficPolicy.loadBalancer is not an object; using round robin' };
  if (lb.simple !== undefined) {
    switch (lb.simple) {
      case 'ROUND_ROBIN':
      case 'UNSPECIFIED':
        return { policy: ROUND_ROBIN };
      case 'PASSTHROUGH':
        return { policy: ROUND_ROBIN, warning: 'simple: PASSTHROUGH is served as round robin' };
      case 'RANDOM':
        return { policy: { kind: 'random' } };
      case 'LEAST_REQUEST':
      case 'LEAST_CONN':
        return { policy: { kind: 'least-request' } };
      default:
        return { policy: ROUND_ROBIN, warning: `simple: ${JSON.stringify(lb.simple)} is not supported; using round robin` };
    }
  }
  const ch = lb.consistentHash;
  if (ch !== undefined) {
    if (!isObj(ch)) return { policy: ROUND_ROBIN, warning: 'consistentHash is not an object; using round robin' };
    if (typeof ch.httpHeaderName === 'string' && ch.httpHeaderName) return { policy: { kind: 'consistent-hash', hash: { kind: 'header', name: ch.httpHeaderName.toLowerCase() } } };
    if (isObj(ch.httpCookie)) {
      const c = ch.httpCookie;
      const ttl = parseDuration(c.ttl);
      if (typeof c.name !== 'string' || !c.name || ttl === null) return { policy: ROUND_ROBIN, warning: 'consistentHash.httpCookie needs a name and a valid ttl (e.g. "3600s"); using round robin' };
      return { policy: { kind: 'consistent-hash', hash: { kind: 'cookie', name: c.name, path: typeof c.path === 'string' && c.path ? c.path : '/', ttlSeconds: ttl } } };
    }
    if (ch.useSourceIp === true) return { policy: { kind: 'consistent-hash', hash: { kind: 'source-ip' } } };
    if (typeof ch.httpQueryParameterName === 'string' && ch.httpQueryParameterName) return { policy: { kind: 'consistent-hash', hash: { kind: 'query', name: ch.httpQueryParameterName } } };
    return { policy: ROUND_ROBIN, warning: 'consistentHash has no supported key (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName); using round robin' };
  }
  return { policy: ROUND_ROBIN, warning: 'loadBalancer has neither simple nor consistentHash; using round robin' };
}

/**
 * The DestinationRule for a service: one in the service's namespace named like the service (the original's
 * binding), else one whose spec.host names it (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>`; short
 * hosts are relative to the rule's namespace, as in istio). Sorted by name for a stable choice.
 */
export function ruleFor(svc: Service, rules: Iterable<IstioObject>, clusterDomain = 'cluster.local'): IstioObject | undefined {
  const hosts = new Set([`${svc.name}.${svc.namespace}`, `${svc.name}.${svc.namespace}.svc`, `${svc.name}.${svc.namespace}.svc.${clusterDomain}`]);
  let byHost: IstioObject | undefined;
  for (const r of rules) {
    if (r.namespace === svc.namespace && r.name === svc.name) return r;
    const host = typeof r.spec.host === 'string' ? r.spec.host.toLowerCase().replace(/\.$/, '') : '';
    const matches = hosts.has(host) || (r.namespace === svc.namespace && host === svc.name);
    if (matches && (!byHost || r.name < byHost.name)) byHost = r;
  }
  return byHost;
}
