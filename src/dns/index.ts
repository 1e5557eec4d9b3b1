/**
 * dns/ — EdgeDNS: a node-local DNS server answering Kubernetes names from the catalog and forwarding the rest,
 * which keeps answering while the cloud is unreachable (the catalog is restored from its snapshot at start).
 *
 *   const dns = new DnsModule({ config, catalog, logger })
 *   await dns.start()   // zone from the catalog, listeners on edgeDNS.listenAddress:listenPort
 *
 * Files: wire.ts (hot-path parsing), zone.ts (cluster records), forwarder.ts (upstreams + cache),
 * server.ts (UDP/TCP listeners).
 */
import { statSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { Catalog } from '../catalog/catalog.ts';
import { dnsListenAddress } from '../config/load.ts';
import type { AgentConfig } from '../config/schema-edgemesh.ts';
import { describeError } from '../errors.ts';
import { ensureListenAddress } from '../net/bridge.ts';
import type { Logger } from '../obs/logger.ts';
import type { MetricsRegistry } from '../obs/metrics.ts';
import { Forwarder, type Upstream, formatUpstream, parseResolvConf, parseUpstream } from './forwarder.ts';
import { DnsServer } from './server.ts';
import { Zone } from './zone.ts';

export interface DnsModuleDeps {
  config: AgentConfig;
  catalog: Catalog;
  logger: Logger;
  metrics?: MetricsRegistry;
}

export class DnsModule {
  readonly name = 'edgeDNS';
  private zone: Zone | null = null;
  private server: DnsServer | null = null;
  private forwarder: Forwarder | null = null;
  private unsubscribe: (() => void) | null = null;
  private resolvCache: { at: number; mtime: number; ups: Upstream[] } | null = null;
  private state: 'stopped' | 'running' | 'failed' = 'stopped';
  private lastError = '';
  private readonly cfg: AgentConfig['modules']['edgeDNS'];
  private readonly host: string;

  constructor(private readonly deps: DnsModuleDeps) {
    this.cfg = deps.config.modules.edgeDNS;
    this.host = dnsListenAddress(deps.config);
  }

  async start(): Promise<void> {
    const { config, catalog, logger } = this.deps;
    try {
      await ensureListenAddress(this.host, config.commonConfig, logger);
      const cache = this.cfg.cacheDNS;
      this.forwarder = new Forwarder({
        upstreams: () => this.upstreams(),
        logger: logger.child('forward'),
        timeoutMs: this.cfg.upstreamTimeoutMs,
        cacheSize: this.cfg.cacheSize,
        maxNegativeTTL: this.cfg.maxNegativeTTL,
        maxTTL: cache.enable ? cache.cacheTTL : 0,
      });
      this.rebuild();
      this.unsubscribe = catalog.subscribe((_snap, change) => {
        if (change.keys.services.size || change.keys.endpoints.size) this.rebuild();
      });
      this.server = new DnsServer({
        host: this.host,
        port: this.cfg.listenPort,
        logger,
        zone: () => this.zone,
        forwarder: this.forwarder,
        forwardAll: cache.enable,
        tcpIdleTimeoutSec: this.cfg.tcpIdleTimeout,
        rateLimit: this.cfg.rateLimit,
      });
      await this.server.start();
      const ups = this.upstreams();
      logger.info(cache.enable ? 'cache DNS mode: forwarding every name' : `answering *.${this.cfg.clusterDomain} from the catalog`, { upstreams: ups.map(formatUpstream).join(',') || 'none' });
      this.registerMetrics();
      this.state = 'running';
    } catch (err) {
      this.state = 'failed';
      this.lastError = describeError(err);
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    await this.server?.stop();
    await this.forwarder?.stop();
    this.server = null;
    this.forwarder = null;
    if (this.state === 'running') this.state = 'stopped';
  }

  get port(): number {
    return this.server?.port ?? this.cfg.listenPort;
  }

  status(): { state: 'stopped' | 'running' | 'failed'; detail: string } {
    if (this.state !== 'running') return { state: this.state, detail: this.lastError || 'not started' };
    const z = this.zone?.stats();
    const s = this.server!.stats;
    return {
      state: 'running',
      detail: `${this.host}:${this.port} udp+tcp, ${z?.names ?? 0} names, upstreams ${this.upstreams().map(formatUpstream).join(',') || 'none'}; ${s.udpQueries + s.tcpQueries} queries (${s.zoneAnswers} zone, ${s.forwarded} forwarded, ${this.forwarder!.stats.cacheHits} cache hits)`,
    };
  }

  private rebuild(): void {
    const t0 = performance.now();
    const z = new Zone(this.cfg.clusterDomain, this.cfg.ttl);
    z.rebuild(this.deps.catalog.snapshot());
    this.zone = z; // a new object: the server's prepared answers for the old zone are dropped with it
    this.deps.logger.debug('zone rebuilt', { names: z.stats().names, ms: +(performance.now() - t0).toFixed(2) });
  }

  /** Where non-cluster names go. cacheDNS mode: the cluster's DNS service (auto-detected) and configured servers. */
  upstreams(): Upstream[] {
    const cache = this.cfg.cacheDNS;
    if (cache.enable) {
      const out: string[] = [];
      if (cache.autoDetect) {
        const snap = this.deps.catalog.snapshot();
        for (const key of ['kube-system/coredns', 'kube-system/kube-dns']) out.push(...(snap.services.get(key)?.clusterIPs ?? []));
        for (const s of snap.services.values()) if (s.namespace === 'kube-system' && s.labels['k8s-app'] === 'kube-dns') out.push(...s.clusterIPs);
      }
      out.push(...cache.upstreamServers);
      return [...new Set(out)].map(parseUpstream);
    }
    if (this.cfg.upstreamServers.length) return this.cfg.upstreamServers.map(parseUpstream);
    return this.fromResolvConf();
  }

  /** resolv.conf nameservers, re-read when the file changes, minus any that is this server. */
  private fromResolvConf(): Upstream[] {
    const path = this.cfg.resolvConf;
    if (!path) return [];
    let mtime = 0;
    try {
      mtime = statSync(path).mtimeMs;
    } catch {
      return [];
    }
    if (this.resolvCache && this.resolvCache.mtime === mtime) return this.resolvCache.ups;
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      return [];
    }
    const self = new Set([this.host, this.deps.config.commonConfig.bridgeDeviceIP]);
    const ups = parseResolvConf(text).nameservers
      // Only port 53 can be us for a resolv.conf entry; a wildcard bind means every local address is us.
      .filter((ns) => !(this.port === 53 && (self.has(ns) || this.host === '0.0.0.0' || this.host === '::')))
      .filter((ns) => isIP(ns))
      .map((ns) => ({ host: ns, port: 53 }));
    const skipped = parseResolvConf(text).nameservers.length - ups.length;
    if (skipped) this.deps.logger.info('skipping resolv.conf nameservers that point at this agent (avoids a forwarding loop)', { skipped, path });
    this.resolvCache = { at: Date.now(), mtime, ups };
    return ups;
  }

  private registerMetrics(): void {
    const m = this.deps.metrics;
    if (!m) return;
    const g = m.counterFrom('edgemesh_dns_queries_total', 'DNS queries by outcome');
    const s = () => this.server?.stats;
    g.set(() => s()?.zoneAnswers ?? 0, { outcome: 'zone' });
    g.set(() => s()?.forwarded ?? 0, { outcome: 'forwarded' });
    g.set(() => s()?.formerr ?? 0, { outcome: 'formerr' });
    g.set(() => s()?.dropped ?? 0, { outcome: 'dropped' });
    g.set(() => s()?.rateLimited ?? 0, { outcome: 'rate_limited' });
    m.counterFrom('edgemesh_dns_cache_hits_total', 'Forwarded answers served from the cache').set(() => this.forwarder?.stats.cacheHits ?? 0);
    m.counterFrom('edgemesh_dns_upstream_failures_total', 'Upstream tries without an answer').set(() => this.forwarder?.stats.upstreamFailures ?? 0);
  }
}
