/**
 * gateway/ — istio Gateway and VirtualService objects compiled into a route table, and the per-request decision.
 *
 * Which Gateways: those whose `spec.selector` matches this gateway's labels (all pairs; an empty selector matches
 * every gateway). The original ignores the selector and serves every Gateway.
 *
 * Which VirtualServices serve a request on a port: those whose `gateways` name a Gateway with a server on that
 * port (`name` in the VirtualService's namespace, or `namespace/name`), whose `hosts` match the request's host,
 * and whose host the server accepts (server `hosts` may carry a `namespace/` part: `./` the Gateway's own, `*`
 * any). Hosts match exactly, or as a wildcard (`*.example.com` matches `a.example.com` and `a.b.example.com`;
 * `*` matches all), case-insensitively, without the port. Several VirtualServices for one host are merged: the
 * most specific host first (exact, then the longest wildcard, then `*`), then by namespace/name; their `http`
 * routes are tried in that order, each in its written order. (The original takes one VirtualService whose hosts
 * equal the server's, chosen by map order, and does not support wildcards.)
 *
 * A route matches when any of its `match` entries does (none: every request): `uri` exact (the path without the
 * query), prefix (the path; `/` matches all) or regex (RE2 syntax, the whole path); `headers`, `queryParams`,
 * `method` and `authority` the same way; `ignoreUriCase`. The destination: `route[]` by weight; its host is a
 * Service `name` (the VirtualService's namespace), `name.namespace` or `name.namespace.svc.<domain>`.
 */
import type { CatalogSnapshot } from '../catalog/catalog.ts';
import type { IstioObject, JsonObject, JsonValue } from '../catalog/model.ts';
import { parseDuration } from '../lb/policy.ts';

export type StringMatch = { kind: 'exact' | 'prefix'; value: string } | { kind: 'regex'; re: RegExp; source: string };

export interface HttpMatch {
  uri?: StringMatch;
  ignoreUriCase: boolean;
  method?: StringMatch;
  authority?: StringMatch;
  headers: [string, StringMatch][];
  queryParams: [string, StringMatch][];
}

export interface Destination {
  namespace: string;
  name: string;
  /** The service port number; 0: the service's only port. */
  port: number;
  weight: number;
}

export interface HttpRoute {
  /** `namespace/virtualService#index` (or its name when set): names the route in metrics and status. */
  id: string;
  matches: HttpMatch[];
  destinations: Destination[];
  totalWeight: number;
  rewrite: { uri?: string; authority?: string } | null;
  /** `headers.request` / `headers.response`: set (replace), add (append), remove; names lower case. */
  requestHeaders: HeaderOps | null;
  responseHeaders: HeaderOps | null;
  /** `redirect`: answered here (301 by default), no destination. */
  redirect: { uri?: string; authority?: string; port?: number; scheme?: string; code: number } | null;
  /** `directResponse`: answered here with this status and body, no destination. */
  direct: { status: number; body: string } | null;
  /** 0: none (istio's default). */
  timeoutMs: number;
  /** Attempts after the first on a connect failure (istio's default is 2). */
  retries: number;
  /** Response statuses that are retried like a connect failure (`retries.retryOn`: 5xx, gateway-error, retriable-status-codes with 503). */
  retryStatuses: ReadonlySet<number>;
  perTryTimeoutMs: number;
}

export interface HeaderOps {
  set: [string, string][];
  add: [string, string][];
  remove: string[];
}

function headerOps(v: JsonValue | undefined): HeaderOps | null {
  if (!isObj(v)) return null;
  const pairs = (x: JsonValue | undefined): [string, string][] => (isObj(x) ? Object.entries(x).filter(([k, val]) => /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k) && typeof val === 'string' && !/[\r\n\0]/.test(val)).map(([k, val]) => [k.toLowerCase(), val as string]) : []);
  const ops = { set: pairs(v.set), add: pairs(v.add), remove: arr(v.remove).map(str).filter(Boolean).map((h) => h.toLowerCase()) };
  return ops.set.length || ops.add.length || ops.remove.length ? ops : null;
}

export interface TcpRoute {
  id: string;
  destination: Destination;
  /** `match[].port`: the Gateway ports it applies to; empty = every port. */
  ports: number[];
}

export interface TlsRoute {
  id: string;
  destination: Destination;
  /** `match[].sniHosts` (wildcards as hosts); empty = the VirtualService's hosts. */
  sniHosts: string[];
  ports: number[];
}

export interface ServerTls {
  mode: 'SIMPLE' | 'MUTUAL' | 'PASSTHROUGH' | 'ISTIO_MUTUAL' | 'AUTO_PASSTHROUGH' | 'OPTIONAL_MUTUAL';
  credentialName: string;
  minProtocolVersion: string;
  maxProtocolVersion: string;
  cipherSuites: string[];
  httpsRedirect: boolean;
}

export interface Server {
  /** namespace/name of its Gateway. */
  gateway: string;
  port: number;
  protocol: string;
  portName: string;
  hosts: { namespace: string; host: string }[];
  tls: ServerTls | null;
}

interface Bound {
  vs: string;
  /** The VirtualService's host patterns that a server on this port accepts. */
  hosts: string[];
  http: HttpRoute[];
  tcp: TcpRoute[];
  tls: TlsRoute[];
}

export interface PortTable {
  port: number;
  /** The protocol of the port's first server (istio requires one protocol per port and gateway). */
  protocol: string;
  servers: Server[];
  bound: Bound[];
}

export interface GatewayTable {
  ports: Map<number, PortTable>;
  /** Objects that could not be used as written, with the reason (shown in status and logged once). */
  problems: string[];
}

const isObj = (v: JsonValue | undefined): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);
const arr = (v: JsonValue | undefined): JsonValue[] => (Array.isArray(v) ? v : []);
const str = (v: JsonValue | undefined): string => (typeof v === 'string' ? v : '');

/** Whether `pattern` (exact, `*.suffix` or `*`) matches `host` (lower case, without port). */
export function hostMatches(pattern: string, host: string): boolean {
  const p = pattern.toLowerCase();
  if (p === '*') return true;
  if (p.startsWith('*.')) return host.endsWith(p.slice(1)) && host.length > p.length - 1;
  return p === host;
}

/** Higher is more specific: exact hosts, then longer wildcards, then `*`. -1: no match. */
function specificity(pattern: string, host: string): number {
  if (!hostMatches(pattern, host)) return -1;
  if (pattern === '*') return 0;
  if (pattern.startsWith('*.')) return pattern.length;
  return 100_000;
}

function stringMatch(v: JsonValue | undefined, where: string, problems: string[]): StringMatch | undefined {
  if (!isObj(v)) return undefined;
  if (typeof v.exact === 'string') return { kind: 'exact', value: v.exact };
  if (typeof v.prefix === 'string') return { kind: 'prefix', value: v.prefix };
  if (typeof v.regex === 'string') {
    try {
      return { kind: 'regex', re: new RegExp(`^(?:${v.regex})$`), source: v.regex };
    } catch (e) {
      problems.push(`${where}: regex ${JSON.stringify(v.regex)} does not compile (${(e as Error).message}); the match never matches`);
      return { kind: 'regex', re: /(?!)/, source: v.regex };
    }
  }
  return undefined;
}

export function matchString(m: StringMatch, v: string, ignoreCase = false): boolean {
  if (m.kind === 'regex') return m.re.test(v);
  const a = ignoreCase ? v.toLowerCase() : v;
  const b = ignoreCase ? m.value.toLowerCase() : m.value;
  return m.kind === 'exact' ? a === b : a.startsWith(b);
}

function parseDestination(d: JsonValue | undefined, vsNs: string, domain: string): Destination | null {
  if (!isObj(d) || !isObj(d.destination)) return null;
  const host = str(d.destination.host).toLowerCase();
  if (!host) return null;
  const parts = host.split('.');
  let name: string, namespace: string;
  if (parts.length === 1) [name, namespace] = [parts[0]!, vsNs];
  else if (parts.length === 2 || host.endsWith(`.svc.${domain}`) || host.endsWith('.svc')) [name, namespace] = [parts[0]!, parts[1]!];
  else return null;
  const port = isObj(d.destination.port) && typeof d.destination.port.number === 'number' ? d.destination.port.number : 0;
  const weight = typeof d.weight === 'number' ? d.weight : 0;
  return { namespace, name, port, weight };
}

function compileHttp(vs: IstioObject, r: JsonObject, i: number, domain: string, problems: string[]): HttpRoute | null {
  const id = `${vs.namespace}/${vs.name}#${str(r.name) || i}`;
  const matches: HttpMatch[] = arr(r.match).filter(isObj).map((m) => ({
    uri: stringMatch(m.uri, `${id} uri`, problems),
    ignoreUriCase: m.ignoreUriCase === true,
    method: stringMatch(m.method, `${id} method`, problems),
    authority: stringMatch(m.authority, `${id} authority`, problems),
    headers: isObj(m.headers) ? Object.entries(m.headers).flatMap(([k, v]) => {
      const sm = stringMatch(v, `${id} header ${k}`, problems);
      return sm ? [[k.toLowerCase(), sm] as [string, StringMatch]] : [];
    }) : [],
    queryParams: isObj(m.queryParams) ? Object.entries(m.queryParams).flatMap(([k, v]) => {
      const sm = stringMatch(v, `${id} queryParam ${k}`, problems);
      return sm ? [[k, sm] as [string, StringMatch]] : [];
    }) : [],
  }));
  const destinations = arr(r.route).map((d) => parseDestination(d, vs.namespace, domain)).filter((d): d is Destination => !!d);
  const redirect = isObj(r.redirect)
    ? {
        ...(typeof r.redirect.uri === 'string' ? { uri: r.redirect.uri } : {}),
        ...(typeof r.redirect.authority === 'string' ? { authority: r.redirect.authority } : {}),
        ...(typeof r.redirect.port === 'number' ? { port: r.redirect.port } : {}),
        ...(typeof r.redirect.scheme === 'string' ? { scheme: r.redirect.scheme } : {}),
        code: typeof r.redirect.redirectCode === 'number' && r.redirect.redirectCode >= 300 && r.redirect.redirectCode < 400 ? r.redirect.redirectCode : 301,
      }
    : null;
  const dr = isObj(r.directResponse) && typeof r.directResponse.status === 'number' && r.directResponse.status >= 200 && r.directResponse.status < 600 ? r.directResponse : null;
  const direct = dr ? { status: dr.status as number, body: isObj(dr.body) && typeof dr.body.string === 'string' ? dr.body.string : '' } : null;
  if (!destinations.length && !redirect && !direct) {
    problems.push(`${id}: no usable destination (a Service name, name.namespace or name.namespace.svc.${domain}), redirect or directResponse; the route is skipped`);
    return null;
  }
  if (destinations.length === 1 && destinations[0]!.weight === 0) destinations[0]!.weight = 100;
  const hdr = isObj(r.headers) ? r.headers : {};
  const totalWeight = destinations.reduce((a, d) => a + d.weight, 0);
  const rw = isObj(r.rewrite) ? { uri: typeof r.rewrite.uri === 'string' ? r.rewrite.uri : undefined, authority: typeof r.rewrite.authority === 'string' ? r.rewrite.authority : undefined } : null;
  const timeout = parseDuration(r.timeout);
  if (timeout === null) problems.push(`${id}: timeout ${JSON.stringify(r.timeout)} is not a duration (e.g. "5s"); no timeout`);
  const retries = isObj(r.retries) && typeof r.retries.attempts === 'number' ? Math.max(0, Math.min(10, r.retries.attempts)) : 2;
  const retryOn = isObj(r.retries) ? str(r.retries.retryOn).split(',').map((x) => x.trim()) : [];
  const retryStatuses = new Set<number>();
  if (retryOn.includes('5xx')) for (let c = 500; c < 600; c++) retryStatuses.add(c);
  if (retryOn.includes('gateway-error')) for (const c of [502, 503, 504]) retryStatuses.add(c);
  if (retryOn.includes('retriable-status-codes') || retryOn.includes('unavailable')) retryStatuses.add(503);
  const perTry = isObj(r.retries) ? parseDuration(r.retries.perTryTimeout) ?? 0 : 0;
  return {
    id, matches, destinations, totalWeight, rewrite: rw, requestHeaders: headerOps(hdr.request), responseHeaders: headerOps(hdr.response),
    redirect, direct, timeoutMs: (timeout ?? 0) * 1000, retries, retryStatuses, perTryTimeoutMs: perTry * 1000,
  };
}

function parseTls(v: JsonValue | undefined): ServerTls | null {
  if (!isObj(v)) return null;
  return {
    mode: (str(v.mode) || 'SIMPLE') as ServerTls['mode'],
    credentialName: str(v.credentialName),
    minProtocolVersion: str(v.minProtocolVersion),
    maxProtocolVersion: str(v.maxProtocolVersion),
    cipherSuites: arr(v.cipherSuites).map(str).filter(Boolean),
    httpsRedirect: v.httpsRedirect === true,
  };
}

/** Gateways whose selector matches `labels`, compiled with the VirtualServices bound to them. */
export function compile(snap: CatalogSnapshot, labels: Readonly<Record<string, string>>, domain = 'cluster.local'): GatewayTable {
  const problems: string[] = [];
  const ports = new Map<number, PortTable>();
  const gateways = [...snap.gateways.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
  for (const gw of gateways) {
    const sel = isObj(gw.spec.selector) ? gw.spec.selector : {};
    if (!Object.entries(sel).every(([k, v]) => labels[k] === v)) continue;
    for (const [i, s] of arr(gw.spec.servers).entries()) {
      if (!isObj(s) || !isObj(s.port) || typeof s.port.number !== 'number') {
        problems.push(`Gateway ${gw.namespace}/${gw.name} server ${i}: no port.number; skipped`);
        continue;
      }
      const protocol = str(s.port.protocol).toUpperCase() || 'HTTP';
      const server: Server = {
        gateway: `${gw.namespace}/${gw.name}`,
        port: s.port.number,
        protocol,
        portName: str(s.port.name),
        hosts: arr(s.hosts).map(str).filter(Boolean).map((h) => {
          const slash = h.indexOf('/');
          if (slash < 0) return { namespace: '*', host: h.toLowerCase() };
          const ns = h.slice(0, slash);
          return { namespace: ns === '.' ? gw.namespace : ns, host: h.slice(slash + 1).toLowerCase() };
        }),
        tls: parseTls(s.tls),
      };
      let pt = ports.get(server.port);
      if (!pt) ports.set(server.port, (pt = { port: server.port, protocol, servers: [], bound: [] }));
      else if (pt.protocol !== protocol) {
        problems.push(`Gateway ${server.gateway} port ${server.port}: protocol ${protocol} where another server on the port says ${pt.protocol}; skipped`);
        continue;
      }
      pt.servers.push(server);
    }
  }
  const services = [...snap.virtualServices.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
  for (const vs of services) {
    const refs = new Set(arr(vs.spec.gateways).map(str).filter((g) => g && g !== 'mesh').map((g) => (g.includes('/') ? g : `${vs.namespace}/${g}`)));
    if (!refs.size) continue;
    const vsHosts = arr(vs.spec.hosts).map(str).filter(Boolean).map((h) => h.toLowerCase());
    let http: HttpRoute[] | null = null;
    let tcp: TcpRoute[] | null = null;
    let tls: TlsRoute[] | null = null;
    for (const pt of ports.values()) {
      const servers = pt.servers.filter((s) => refs.has(s.gateway));
      if (!servers.length) continue;
      // A VirtualService host is served when some server host admits both the host and the VirtualService's namespace.
      const hosts = vsHosts.filter((h) => servers.some((s) => s.hosts.some((sh) => (sh.namespace === '*' || sh.namespace === vs.namespace) && (hostMatches(sh.host, h) || hostMatches(h, sh.host)))));
      if (!hosts.length) continue;
      http ??= arr(vs.spec.http).filter(isObj).map((r, i) => compileHttp(vs, r, i, domain, problems)).filter((r): r is HttpRoute => !!r);
      const ports = (r: JsonObject) => arr(r.match).filter(isObj).map((m) => m.port).filter((x): x is number => typeof x === 'number');
      tcp ??= arr(vs.spec.tcp).filter(isObj).flatMap((r, i) => {
        const d = parseDestination(arr(r.route)[0], vs.namespace, domain);
        if (!d) problems.push(`${vs.namespace}/${vs.name}#tcp${i}: no usable destination; the route is skipped`);
        return d ? [{ id: `${vs.namespace}/${vs.name}#tcp${i}`, destination: d, ports: ports(r) }] : [];
      });
      tls ??= arr(vs.spec.tls).filter(isObj).flatMap((r, i) => {
        const d = parseDestination(arr(r.route)[0], vs.namespace, domain);
        if (!d) problems.push(`${vs.namespace}/${vs.name}#tls${i}: no usable destination; the route is skipped`);
        const sni = arr(r.match).filter(isObj).flatMap((m) => arr(m.sniHosts).map(str)).filter(Boolean).map((h) => h.toLowerCase());
        return d ? [{ id: `${vs.namespace}/${vs.name}#tls${i}`, destination: d, sniHosts: sni.length ? sni : vsHosts, ports: ports(r) }] : [];
      });
      pt.bound.push({ vs: `${vs.namespace}/${vs.name}`, hosts, http, tcp, tls });
    }
  }
  return { ports, problems };
}

export interface RequestView {
  host: string;
  method: string;
  /** Path with query, as on the request line. */
  target: string;
  header(name: string): string | null;
}

export type Decision = { route: HttpRoute; match: HttpMatch | null } | { status: 404; reason: string };

function matches(m: HttpMatch, req: RequestView, path: string, query: URLSearchParams | null): boolean {
  if (m.uri && !matchString(m.uri, m.uri.kind === 'prefix' ? req.target : path, m.ignoreUriCase)) return false;
  if (m.method && !matchString(m.method, req.method)) return false;
  if (m.authority && !matchString(m.authority, req.host)) return false;
  for (const [name, sm] of m.headers) {
    const v = req.header(name);
    if (v === null || !matchString(sm, v)) return false;
  }
  if (m.queryParams.length) {
    const q = query ?? new URLSearchParams('');
    for (const [name, sm] of m.queryParams) {
      const v = q.get(name);
      if (v === null || !matchString(sm, v)) return false;
    }
  }
  return true;
}

/** The route for one request on `port`, per request (keep-alive connections are routed request by request). */
export function decide(table: GatewayTable, port: number, req: RequestView): Decision {
  const pt = table.ports.get(port);
  if (!pt) return { status: 404, reason: `no Gateway server on port ${port}` };
  const host = req.host.toLowerCase();
  if (!pt.servers.some((s) => s.hosts.some((h) => hostMatches(h.host, host)))) return { status: 404, reason: `no Gateway server on port ${port} accepts host ${JSON.stringify(host)}` };
  const candidates: { score: number; b: Bound }[] = [];
  for (const b of pt.bound) {
    let best = -1;
    for (const h of b.hosts) best = Math.max(best, specificity(h, host));
    if (best >= 0) candidates.push({ score: best, b });
  }
  if (!candidates.length) return { status: 404, reason: `no VirtualService for host ${JSON.stringify(host)} on port ${port}` };
  candidates.sort((x, y) => y.score - x.score || x.b.vs.localeCompare(y.b.vs));
  const q = req.target.indexOf('?');
  const path = q < 0 ? req.target : req.target.slice(0, q);
  const query = q < 0 ? null : new URLSearchParams(req.target.slice(q + 1));
  for (const { b } of candidates) {
    for (const route of b.http) {
      if (!route.matches.length) return { route, match: null };
      for (const m of route.matches) if (matches(m, req, path, query)) return { route, match: m };
    }
  }
  return { status: 404, reason: `no route matches ${req.method} ${path} for host ${JSON.stringify(host)}` };
}

/** A destination by weight (`random` in [0, 1)). */
export function pickDestination(route: HttpRoute, random = Math.random()): Destination {
  if (route.destinations.length === 1 || route.totalWeight <= 0) return route.destinations[0]!;
  let x = random * route.totalWeight;
  for (const d of route.destinations) if ((x -= d.weight) < 0) return d;
  return route.destinations[route.destinations.length - 1]!;
}

/** The request target after the route's URI rewrite: a prefix match's prefix is replaced, otherwise the whole path. */
export function rewriteTarget(target: string, route: HttpRoute, m: HttpMatch | null): string {
  const to = route.rewrite?.uri;
  if (to === undefined) return target;
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const rest = q < 0 ? '' : target.slice(q);
  if (m?.uri?.kind === 'prefix' && path.startsWith(m.uri.value)) return `${to}${path.slice(m.uri.value.length)}${rest}`.replace(/^\/\//, '/') || '/';
  return `${to}${rest}`;
}

/** The TCP route for a connection on `port`: the first of the bound VirtualServices' `tcp` routes that applies. */
export function decideTcp(table: GatewayTable, port: number): TcpRoute | null {
  for (const b of table.ports.get(port)?.bound ?? []) for (const r of b.tcp) if (!r.ports.length || r.ports.includes(port)) return r;
  return null;
}

/** The TLS passthrough route for an SNI name on `port`: the most specific `sniHosts` match. */
export function decideTls(table: GatewayTable, port: number, sni: string): TlsRoute | null {
  const pt = table.ports.get(port);
  if (!pt) return null;
  const name = sni.toLowerCase();
  if (!pt.servers.some((s) => s.hosts.some((h) => hostMatches(h.host, name)))) return null;
  let best: TlsRoute | null = null;
  let score = -1;
  for (const b of pt.bound) {
    for (const r of b.tls) {
      if (r.ports.length && !r.ports.includes(port)) continue;
      for (const h of r.sniHosts) {
        const sc = specificity(h, name);
        if (sc > score) [best, score] = [r, sc];
      }
    }
  }
  return best;
}
