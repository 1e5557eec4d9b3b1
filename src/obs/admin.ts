/**
 * The admin HTTP server (commonConfig.adminAddress, default 127.0.0.1:10551):
 *   /healthz        200 while the process serves
 *   /readyz         200 once the catalog is synced or restored from the snapshot and enabled modules are up;
 *                   503 with the reason otherwise
 *   /status         the agent's state as JSON (what `edgemesh status` prints)
 *   /debug/catalog  the internal catalog as JSON (Secrets are listed without their data)
 *   /debug/proxy    the proxy's service ports: cluster IP:port → listener, endpoints, policy
 *   /metrics        Prometheus text
 * It binds loopback by default: it exposes the catalog, so putting it on a routable address is a choice.
 * Requests must name this server in their Host header (127.0.0.1, localhost, [::1] or the configured address,
 * with or without the port): a web page in a browser on the node could otherwise read it through DNS
 * rebinding (its own name resolving to 127.0.0.1). Anything else gets 421.
 */
import type { Server } from 'bun';
import { EdgeMeshError, describeError } from '../errors.ts';
import type { Logger } from './logger.ts';
import type { MetricsRegistry } from './metrics.ts';

export interface Readiness {
  ready: boolean;
  reason: string;
}

export interface AdminDeps {
  host: string;
  port: number;
  logger: Logger;
  metrics: MetricsRegistry;
  readiness: () => Readiness;
  status: () => unknown;
  /** Read-only JSON views by path: `/debug/catalog` (catalog/debug-view.ts), `/debug/proxy`, `/debug/tunnel`. */
  debug?: Record<string, () => unknown>;
}

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body, null, 2) + '\n', { status, headers: { 'content-type': 'application/json' } });

export class AdminServer {
  private server: Server<undefined> | null = null;
  /** Requests refused for their Host header (edgemesh_admin_refused_host_total). */
  refusedHosts = 0;

  constructor(private readonly deps: AdminDeps) {
    deps.metrics.counterFrom('edgemesh_admin_refused_host_total', 'Admin requests refused because their Host header names another server (DNS rebinding)').set(() => this.refusedHosts);
  }

  get url(): string {
    const h = this.deps.host.includes(':') ? `[${this.deps.host}]` : this.deps.host;
    return `http://${h}:${this.server?.port ?? this.deps.port}`;
  }

  start(): void {
    const { host, port, logger } = this.deps;
    try {
      this.server = Bun.serve({
        hostname: host,
        port,
        reusePort: false,
        fetch: (req) => this.handle(req),
        error: (err) => {
          logger.error('admin request failed', { error: describeError(err) });
          return new Response('internal error\n', { status: 500 });
        },
      });
    } catch (err) {
      throw new EdgeMeshError('ADMIN_LISTEN', `cannot listen on ${host}:${port} for the admin server: ${describeError(err)}; is another edgemesh running? Set commonConfig.adminAddress to another address, or "" to disable it`, { cause: err });
    }
    logger.info('admin server listening', { url: this.url });
  }

  async stop(): Promise<void> {
    await this.server?.stop(true);
    this.server = null;
  }

  /** Host header values (lower case, port removed) this server answers to. */
  private readonly hosts = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

  /** The Host header names this server (see the header comment). */
  private hostAllowed(host: string | null): boolean {
    if (!host) return false;
    const h = host.toLowerCase();
    const name = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : h.replace(/:\d+$/, '');
    return this.hosts.has(name) || name === this.deps.host.toLowerCase() || name === `[${this.deps.host.toLowerCase()}]`;
  }

  private handle(req: Request): Response | Promise<Response> {
    if (!this.hostAllowed(req.headers.get('host'))) {
      this.refusedHosts++;
      return new Response('misdirected request: this admin server answers only to its own address (Host: 127.0.0.1, localhost or the configured adminAddress)\n', { status: 421 });
    }
    const path = new URL(req.url).pathname;
    if (req.method !== 'GET' && req.method !== 'HEAD') return new Response('method not allowed\n', { status: 405, headers: { allow: 'GET, HEAD' } });
    switch (path) {
      case '/healthz':
        return new Response('ok\n');
      case '/readyz': {
        const r = this.deps.readiness();
        return new Response(`${r.ready ? 'ready' : 'not ready'}: ${r.reason}\n`, { status: r.ready ? 200 : 503 });
      }
      case '/status':
        return json(this.deps.status());
      case '/metrics':
        return this.deps.metrics.collect().then(() => new Response(this.deps.metrics.render(), { headers: { 'content-type': 'text/plain; version=0.0.4' } }));
      default: {
        const view = this.deps.debug?.[path];
        if (view) return json(view());
        return new Response(`not found; try /healthz /readyz /status /metrics ${Object.keys(this.deps.debug ?? {}).join(' ')}\n`, { status: 404 });
      }
    }
  }
}
