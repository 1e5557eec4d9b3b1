/**
 * gateway/ — the edge gateway: external clients reach services through istio Gateway and VirtualService objects.
 *
 *   const gw = new GatewayModule({ config, catalog, dialer, logger, metrics })
 *   await gw.start()   // listeners on the selected addresses for every HTTP server port of the matching Gateways
 *   await gw.stop()
 *
 * Listeners follow the machine (addresses.ts: re-read every second) and the catalog (a Gateway change opens and
 * closes only the listeners whose address:port changed; connections on the others are untouched). Each request
 * is routed on its own (routes.ts), so one keep-alive connection may reach several services; the backend is
 * picked by the service's balancer (DestinationRules apply) and reached through the one Dialer: a local socket,
 * or the tunnel to the endpoint's node. The HTTP/1.1 listener is server.ts (why not Bun.serve: there); backend
 * connections are upstream.ts.
 *
 * Status codes: no route 404; unknown service or no ready endpoint 503; every endpoint refused or reset 502;
 * the route's timeout 504; a body over maxRequestBodyMiB 413; a malformed request 400.
 */
import type { Catalog, CatalogSnapshot } from '../catalog/catalog.ts';
import type { Service, ServicePort } from '../catalog/model.ts';
import type { GatewayConfig } from '../config/schema-edgemesh.ts';
import { LocalDialer } from '../dial/local.ts';
import { openPipe } from '../dial/open.ts';
import type { Dialer } from '../dial/route.ts';
import { describeError } from '../errors.ts';
import { Balancer, type LbEndpoint } from '../lb/balancer.ts';
import { readyEndpoints } from '../lb/endpoints.ts';
import { parsePolicy, ruleFor } from '../lb/policy.ts';
import type { Logger } from '../obs/logger.ts';
import type { CounterSlot, MetricsRegistry } from '../obs/metrics.ts';
import { AddressWatch } from './addresses.ts';
import type { RequestHead } from './http1.ts';
import { type Destination, type GatewayTable, type PortTable, compile, decide, decideTcp, decideTls, pickDestination } from './routes.ts';
import { type GatewayRouter, HttpListener, type ListenerSettings, type Plan } from './server.ts';
import { PortCertificates } from './tls.ts';
import { type StreamPlan, type StreamRouter, StreamListener } from './stream.ts';
import type { Pipe, PipeHandlers } from '../dial/contract.ts';
import { UpstreamPool, type UpstreamConn } from './upstream.ts';

export type GatewaySettings = GatewayConfig['modules']['edgeGateway'];

export interface GatewayDeps {
  config: GatewaySettings;
  catalog: Catalog;
  dialer: Dialer;
  logger: Logger;
  metrics?: MetricsRegistry;
  clusterDomain?: string;
  /** Tests: the interface list to select addresses from. */
  interfaces?: () => ReturnType<typeof import('node:os').networkInterfaces>;
}

interface Listener {
  address: string;
  port: number;
  protocol: string;
  server: HttpListener | StreamListener | null;
  starting: boolean;
  error: string | null;
}

interface Backend {
  key: string;
  svc: Service;
  sp: ServicePort;
  balancer: Balancer;
}

export interface GatewayStatus {
  addresses: readonly string[];
  listeners: { address: string; port: number; protocol: string; tls: boolean; state: 'listening' | 'failed'; error: string | null }[];
  routes: { id: string; requests: number; lastError: string | null }[];
  problems: string[];
}

export class GatewayModule implements GatewayRouter, StreamRouter {
  readonly name = 'edgeGateway';
  private table: GatewayTable = { ports: new Map(), problems: [] };
  private snap: CatalogSnapshot;
  private readonly listeners = new Map<string, Listener>();
  private readonly backends = new Map<string, Backend>();
  private readonly pool = new UpstreamPool();
  private readonly local: LocalDialer;
  private watch: AddressWatch | null = null;
  private unsubscribe: (() => void) | null = null;
  private retry: ReturnType<typeof setInterval> | null = null;
  private state: 'stopped' | 'running' = 'stopped';
  private readonly routeStats = new Map<string, { requests: number; lastError: string | null }>();
  private loggedProblems = new Set<string>();
  private readonly requests;
  private readonly latency;
  private readonly connections;
  private readonly backendRequests;
  private readonly slots = new Map<string, { requests: CounterSlot; backend: CounterSlot; up: CounterSlot; down: CounterSlot }>();
  private readonly bytes;

  constructor(private readonly d: GatewayDeps) {
    this.snap = d.catalog.snapshot();
    this.local = new LocalDialer({ timeoutMs: d.config.connectTimeoutMs });
    const m = d.metrics;
    this.requests = m?.counter('edgemesh_gateway_requests_total', 'Requests through the gateway, by route and status class');
    this.backendRequests = m?.counter('edgemesh_gateway_backend_requests_total', 'Requests answered by a backend (namespace/service:port), by status class');
    this.bytes = m?.counter('edgemesh_gateway_bytes_total', 'Bytes of answered requests by route: up (to the backend: head and body), down (to the client)');
    this.connections = m?.counter('edgemesh_gateway_connections_total', 'TCP and TLS passthrough connections, by route and outcome (ok, refused, failed)');
    this.latency = m?.histogram('edgemesh_gateway_request_seconds', 'Time from a request to its response head', [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]);
    m?.gauge('edgemesh_gateway_listeners', 'Gateway listeners open now').set(() => [...this.listeners.values()].filter((l) => l.server).length);
    m?.gauge('edgemesh_gateway_upstream_idle_connections', 'Keep-alive backend connections waiting for a request').set(() => this.pool.idleCount);
  }

  async start(): Promise<void> {
    this.unsubscribe = this.d.catalog.subscribe((snap, change) => {
      this.snap = snap;
      const k = change.keys;
      if (k.gateways.size || k.virtualServices.size) this.recompile();
      else if (k.secrets.size) {
        this.rebuildCertificates();
        this.reconcile();
      }
      if (k.services.size || k.endpoints.size || k.destinationRules.size) this.refreshBackends();
    });
    this.state = 'running';
    this.recompile();
    this.watch = new AddressWatch(this.d.config, () => this.reconcile(), { read: this.d.interfaces });
    this.watch.start();
    // Listeners that could not bind (an address not yet usable, a port taken) are retried.
    this.retry = setInterval(() => {
      if ([...this.listeners.values()].some((l) => !l.server)) this.reconcile();
    }, 2000);
    this.retry.unref?.();
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    this.watch?.stop();
    if (this.retry) clearInterval(this.retry);
    for (const l of this.listeners.values()) l.server?.stop(true);
    this.listeners.clear();
    this.pool.close();
    this.local.stop();
    this.state = 'stopped';
  }

  moduleState(): { state: 'running' | 'stopped'; detail: string } {
    const open = [...this.listeners.values()].filter((l) => l.server).length;
    return { state: this.state, detail: `${open} listeners, ${this.table.ports.size} server ports, ${this.watch?.addresses.length ?? 0} addresses` };
  }

  status(): GatewayStatus {
    return {
      addresses: this.watch?.addresses ?? [],
      listeners: [...this.listeners.values()].map((l) => ({ address: l.address, port: l.port, protocol: l.protocol, tls: l.protocol === 'HTTPS' || l.protocol === 'TLS-TERMINATE', state: l.server ? 'listening' : 'failed', error: l.error })),
      routes: [...this.routeStats].map(([id, s]) => ({ id, ...s })),
      problems: this.table.problems,
    };
  }

  private recompile(): void {
    this.table = compile(this.snap, this.d.config.labels, this.d.clusterDomain);
    this.rebuildCertificates();
    for (const p of this.table.problems) {
      if (this.loggedProblems.has(p)) continue;
      this.loggedProblems.add(p);
      this.d.logger.warn(p);
    }
    this.reconcile();
  }

  /** Certificates of each HTTPS port, rebuilt when Gateways or Secrets change (tls.ts). */
  private certs = new Map<number, PortCertificates>();

  private rebuildCertificates(): void {
    const next = new Map<number, PortCertificates>();
    for (const pt of this.table.ports.values()) {
      const kind = portKind(pt);
      if (kind !== 'HTTPS' && kind !== 'TLS-TERMINATE') continue;
      const old = this.certs.get(pt.port);
      const c = new PortCertificates(pt, this.snap, old);
      next.set(pt.port, old && old.key === c.key ? old : c);
      if (old && old.key !== c.key) this.d.logger.info('gateway certificates changed: new connections use them', { port: pt.port });
      for (const p of c.problems) this.warnOnce(p);
    }
    this.certs = next;
  }

  private warnOnce(p: string): void {
    if (this.loggedProblems.has(p)) return;
    this.loggedProblems.add(p);
    this.d.logger.warn(p);
  }

  /** Listeners for every address × HTTP and HTTPS server port; others are closed (established connections finish). */
  private reconcile(): void {
    if (!this.watch) return;
    const want = new Map<string, { address: string; port: number; protocol: string }>();
    for (const pt of this.table.ports.values()) {
      const kind = portKind(pt);
      if (!kind) {
        this.warnOnce(`port ${pt.port}: protocol ${pt.protocol} is not served (HTTP, HTTPS, TLS passthrough and TCP are)`);
        continue;
      }
      if (kind !== 'HTTPS' && kind !== 'TLS-TERMINATE') {
        for (const address of this.watch.addresses) want.set(`${kind} ${address}:${pt.port}`, { address, port: pt.port, protocol: kind });
        continue;
      }
      if (!this.certs.get(pt.port)?.entries.length) continue; // no usable certificate: said in the problems
      // The TLS version range is fixed when a listener starts: a change of it starts a new one (tls.ts).
      const b = this.certs.get(pt.port)!.bounds;
      for (const address of this.watch.addresses) want.set(`${kind} ${address}:${pt.port} ${b.minVersion}-${b.maxVersion}`, { address, port: pt.port, protocol: kind });
    }
    for (const [key, l] of this.listeners) {
      if (want.has(key)) continue;
      l.server?.stop(false);
      this.listeners.delete(key);
      this.d.logger.info('gateway listener closed', { address: `${l.address}:${l.port}`, protocol: l.protocol });
    }
    for (const [key, w] of want) {
      const have = this.listeners.get(key);
      if (have?.server || have?.starting) continue;
      const l: Listener = have ?? { ...w, server: null, error: null, starting: false };
      this.listeners.set(key, l);
      const port = w.port;
      const certs = () => this.certs.get(port)!;
      const server = w.protocol === 'TCP' || w.protocol === 'TLS' || w.protocol === 'TLS-TERMINATE'
        ? new StreamListener(w.address, w.port, w.protocol === 'TLS' ? 'tls' : 'tcp', this, this.d.config.requestHeadTimeoutMs, w.protocol === 'TLS-TERMINATE' ? certs : undefined)
        : new HttpListener(w.address, w.port, this, this.settings, w.protocol === 'HTTPS' ? () => this.certs.get(port)! : undefined);
      l.starting = true;
      server.start().then(
        () => {
          l.starting = false;
          if (this.listeners.get(key) !== l || this.state !== 'running') return server.stop(true);
          l.server = server;
          l.error = null;
          this.d.logger.info('gateway listening', { address: `${w.address}:${w.port}`, protocol: w.protocol });
        },
        (e: unknown) => {
          l.starting = false;
          const why = describeError(e);
          if (l.error !== why) this.d.logger.warn('gateway cannot listen; retrying every 2 s', { address: `${w.address}:${w.port}`, error: why });
          l.error = why;
        },
      );
    }
  }

  /** Balancers keep their state (round robin position, affinity) across catalog changes; endpoints and policy follow. */
  private refreshBackends(): void {
    for (const [key, b] of this.backends) {
      const fresh = this.lookup(b.svc.namespace, b.svc.name, b.sp.port);
      if (!fresh) {
        this.backends.delete(key);
        continue;
      }
      b.svc = fresh.svc;
      b.sp = fresh.sp;
      this.configure(b);
    }
  }

  private lookup(namespace: string, name: string, port: number): { svc: Service; sp: ServicePort } | null {
    const svc = this.snap.services.get(`${namespace}/${name}`);
    if (!svc) return null;
    const tcp = svc.ports.filter((p) => p.protocol === 'TCP');
    const sp = port ? tcp.find((p) => p.port === port) : tcp.length === 1 ? tcp[0] : undefined;
    return sp ? { svc, sp } : null;
  }

  private configure(b: Backend): void {
    b.balancer.setEndpoints(readyEndpoints(this.snap, b.svc, b.sp));
    const rule = ruleFor(b.svc, this.snap.destinationRules.values(), this.d.clusterDomain);
    const parsed = rule ? parsePolicy(rule.spec) : { policy: { kind: 'round-robin' as const } };
    b.balancer.setPolicy(parsed.policy, { enabled: b.svc.sessionAffinity === 'ClientIP', timeoutSec: b.svc.sessionAffinityTimeout });
  }

  private backend(dest: Destination): Backend | string {
    const key = `${dest.namespace}/${dest.name}:${dest.port}`;
    const have = this.backends.get(key);
    if (have) return have;
    const found = this.lookup(dest.namespace, dest.name, dest.port);
    if (!found) {
      const svc = this.snap.services.get(`${dest.namespace}/${dest.name}`);
      return svc ? `service ${dest.namespace}/${dest.name} has no TCP port ${dest.port || '(several: the route must name one)'}` : `no service ${dest.namespace}/${dest.name}`;
    }
    const b: Backend = { key, ...found, balancer: new Balancer({ ring: this.d.config.loadBalancer.consistentHash }) };
    this.configure(b);
    this.backends.set(key, b);
    return b;
  }

  private get settings(): ListenerSettings {
    const c = this.d.config;
    return { headTimeoutMs: c.requestHeadTimeoutMs, idleTimeoutMs: c.idleTimeoutSec * 1000, bodyTimeoutMs: c.idleTimeoutSec * 1000, maxBodyBytes: c.maxRequestBodyMiB * 1024 * 1024 };
  }

  // ---- GatewayRouter (server.ts asks these per request) ----
  decide(head: RequestHead, host: string, port: number): Plan | { status: number; reason: string } {
    const d = decide(this.table, port, { host, method: head.method, target: head.target, header: (n) => head.headers.find(([k]) => k === n)?.[1] ?? null });
    if ('status' in d) return d;
    if (head.upgrade && head.upgrade !== 'websocket') return { status: 501, reason: `upgrade to ${head.upgrade} is not supported (websocket is)` };
    if (d.route.redirect || d.route.direct) return { route: d.route, match: d.match, backendKey: '' }; // answered by the listener
    const b = this.backend(pickDestination(d.route));
    if (typeof b === 'string') return { status: 503, reason: `no healthy upstream: ${b}` };
    return { route: d.route, match: d.match, backendKey: b.key };
  }

  pick(plan: Plan, clientIP: string, tried: ReadonlySet<string>): LbEndpoint | null {
    const b = this.backends.get(plan.backendKey);
    if (!b) return null;
    return b.balancer.pick({ clientIP: b.balancer.usesClientIP() ? clientIP : '', exclude: tried });
  }

  acquire(plan: Plan, ep: LbEndpoint): void {
    this.backends.get(plan.backendKey)?.balancer.acquire(ep.key);
  }

  release(plan: Plan, ep: LbEndpoint): void {
    this.backends.get(plan.backendKey)?.balancer.release(ep.key);
  }

  pooled(ep: LbEndpoint): UpstreamConn | null {
    return this.pool.take(`${ep.nodeName}/${ep.key}`);
  }

  async open(ep: LbEndpoint): Promise<UpstreamConn> {
    const conn = this.pool.create(`${ep.nodeName}/${ep.key}`);
    conn.pipe = await openPipe(this.d.dialer, this.local, ep, conn, AbortSignal.timeout(this.d.config.connectTimeoutMs));
    return conn;
  }

  done(c: UpstreamConn, reusable: boolean): void {
    this.pool.release(c, reusable);
  }

  record(routeId: string, status: number, seconds: number, error?: string, line?: () => string, traffic?: { backend: string; up: number; down: number }): void {
    const code = `${Math.floor(status / 100)}xx`;
    // Slots per route and status class, so a request costs a map lookup and additions, not label keys.
    const key = `${routeId}\0${code}\0${traffic?.backend ?? ''}`;
    let sl = this.slots.get(key);
    if (!sl) {
      sl = {
        requests: this.requests?.slot({ route: routeId, code }) ?? { v: 0 },
        backend: traffic && this.backendRequests ? this.backendRequests.slot({ backend: traffic.backend, code }) : { v: 0 },
        up: this.bytes?.slot({ route: routeId, direction: 'up' }) ?? { v: 0 },
        down: this.bytes?.slot({ route: routeId, direction: 'down' }) ?? { v: 0 },
      };
      this.slots.set(key, sl);
    }
    sl.requests.v++;
    if (traffic) {
      sl.backend.v++;
      sl.up.v += traffic.up;
      sl.down.v += traffic.down;
    }
    this.latency?.observe(seconds);
    if (routeId !== '(none)') {
      let s = this.routeStats.get(routeId);
      if (!s) this.routeStats.set(routeId, (s = { requests: 0, lastError: null }));
      s.requests++;
      if (error) s.lastError = error;
    }
    if (this.d.config.accessLog && line) this.d.logger.info(line());
  }

  // ---- StreamRouter (stream.ts asks these per connection) ----
  tcpPlan(port: number): StreamPlan | string {
    const r = decideTcp(this.table, port);
    if (!r) return `no tcp route for port ${port}`;
    const b = this.backend(r.destination);
    return typeof b === 'string' ? b : { routeId: r.id, backendKey: b.key };
  }

  tlsPlan(port: number, sni: string): StreamPlan | string {
    const r = decideTls(this.table, port, sni);
    if (!r) return `no tls route for server name ${JSON.stringify(sni)} on port ${port}`;
    const b = this.backend(r.destination);
    return typeof b === 'string' ? b : { routeId: r.id, backendKey: b.key };
  }

  pickFor(backendKey: string, clientIP: string, tried: ReadonlySet<string>): LbEndpoint | null {
    const b = this.backends.get(backendKey);
    return b ? b.balancer.pick({ clientIP: b.balancer.usesClientIP() ? clientIP : '', exclude: tried }) : null;
  }

  openPipe(ep: LbEndpoint, h: PipeHandlers): Promise<Pipe> {
    return openPipe(this.d.dialer, this.local, ep, h, AbortSignal.timeout(this.d.config.connectTimeoutMs));
  }

  recordConnection(routeId: string, outcome: 'ok' | 'refused' | 'failed', error?: string): void {
    this.connections?.inc({ route: routeId, outcome });
    if (routeId === '(none)') return;
    let s = this.routeStats.get(routeId);
    if (!s) this.routeStats.set(routeId, (s = { requests: 0, lastError: null }));
    s.requests++;
    if (error) s.lastError = error;
  }
}

/** How a server port is served: its protocol, with HTTPS in PASSTHROUGH mode served as TLS passthrough. */
function portKind(pt: PortTable): 'HTTP' | 'HTTPS' | 'TLS' | 'TLS-TERMINATE' | 'TCP' | null {
  const passthrough = pt.servers.every((s) => s.tls?.mode === 'PASSTHROUGH' || s.tls?.mode === 'AUTO_PASSTHROUGH');
  const terminate = pt.servers.every((s) => s.tls?.mode === 'SIMPLE' || s.tls?.mode === 'MUTUAL');
  switch (pt.protocol) {
    case 'HTTP':
      return 'HTTP';
    case 'HTTPS':
      return passthrough ? 'TLS' : 'HTTPS';
    case 'TLS':
      return passthrough ? 'TLS' : terminate ? 'TLS-TERMINATE' : null;
    case 'TCP':
      return 'TCP';
    default:
      return null;
  }
}
