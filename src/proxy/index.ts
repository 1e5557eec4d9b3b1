/**
 * EdgeProxy: one listener per proxied service port (the original's model: the listener *is* the destination,
 * so no SO_ORIGINAL_DST is needed), each with its own balancer, kept in step with the catalog. Interception rules
 * (rules.ts) send cluster-IP traffic to these listeners; without them the listeners are still reachable on
 * their own ports (`edgemesh status` and /debug/proxy list them), so the proxy can be tried unprivileged.
 *
 *   const proxy = new ProxyModule({ config, catalog, nodeName, logger })
 *   await proxy.start()
 *   proxy.ports()   // [{ service: 'shop/web:http', clusterIPs, port: 80, listen: '169.254.96.16:39123', … }]
 */
import type { Catalog, CatalogSnapshot } from '../catalog/catalog.ts';
import type { Service, ServicePort } from '../catalog/model.ts';
import { proxyListenAddress } from '../config/load.ts';
import type { AgentConfig } from '../config/schema-edgemesh.ts';
import { EdgeMeshError, describeError } from '../errors.ts';
import { Balancer, type LbEndpoint } from '../lb/balancer.ts';
import { describePolicy, parsePolicy, ruleFor } from '../lb/policy.ts';
import { ensureListenAddress } from '../net/bridge.ts';
import type { Logger } from '../obs/logger.ts';
import type { MetricsRegistry } from '../obs/metrics.ts';
import type { KernelTarget, PortMapping } from './mapping.ts';
import { type RulesBackend, chooseRules } from './rules.ts';
import { readyEndpoints } from '../lb/endpoints.ts';
import { TcpServicePort } from './tcp.ts';
import { UdpServicePort } from './udp.ts';
import { Dialer } from '../dial/route.ts';
import { socks5Route } from './socks5.ts';
import { BulkSplicer } from './splicer.ts';
import { UdpConntrack } from './conntrack.ts';
import { readFileSync } from 'node:fs';

export type { KernelTarget, PortMapping } from './mapping.ts';

export interface ProxyModuleDeps {
  config: AgentConfig;
  catalog: Catalog;
  nodeName: string;
  logger: Logger;
  metrics?: MetricsRegistry;
  /** How endpoints are reached (dial/route.ts: local, or through the tunnel); absent: every endpoint is dialed from here. */
  dialer?: Dialer;
  /** An interception backend to use instead of the one `interception` chooses (tests). */
  rules?: RulesBackend;
  /** The UDP conntrack clean-up to use instead of the conntrack tool's (tests); null: none. */
  conntrack?: UdpConntrack | null;
}

/** The largest consistent-hash partition table hashed in the kernel (one nft map element per partition). */
const MAX_KERNEL_PARTITIONS = 4096;

/** Whether this network namespace forwards IPv4 (read per rule sync: an operator may turn it on later). */
function ipForwarding(): boolean {
  try {
    return readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim() === '1';
  } catch {
    return false;
  }
}

interface Entry {
  svc: Service;
  sp: ServicePort;
  balancer: Balancer;
  /** The listener: TCP or UDP by the service port's protocol. */
  listener: TcpServicePort | UdpServicePort;
  /** Fields whose change recreates the listener with a new port, as the original does (protocol, ports, addresses, affinity). */
  identity: string;
  policyWarning: string | null;
}

export class ProxyModule {
  readonly name = 'edgeProxy';
  /** The one decision of how an endpoint is reached (dial/route.ts). */
  private readonly dialer: Dialer;
  private readonly isLocal: (ep: LbEndpoint) => boolean;
  private entries = new Map<string, Entry>();
  private unsubscribe: (() => void) | null = null;
  private state: 'stopped' | 'running' | 'failed' = 'stopped';
  private lastError = '';
  private readonly host: string;
  private readonly cfg: AgentConfig['modules']['edgeProxy'];
  private rules: RulesBackend | null = null;
  private rulesRunning: Promise<void> | null = null;
  private rulesPending: PortMapping[] | null = null;
  private rulesError: string | null = null;
  private resync: ReturnType<typeof setInterval> | null = null;
  /** Syncs run one at a time, in order (opening a UDP socket is async). */
  private syncing: Promise<void> = Promise.resolve();
  private socks5: TcpServicePort | null = null;
  /** False once the kernel refused the ClientIP-affinity rules (an old kernel, no xt_recent): the listener keeps it. */
  private kernelAffinity = true;
  /** The splice(2) worker that long bulk connections move to (spliceBulkBytes > 0 and available here). */
  private splicer: BulkSplicer | null = null;
  /** Deletes UDP conntrack entries a rule change left pointing elsewhere; without it UDP stays on the listener. */
  private conntrack: UdpConntrack | null = null;

  constructor(private readonly deps: ProxyModuleDeps) {
    this.cfg = deps.config.modules.edgeProxy;
    this.host = proxyListenAddress(deps.config);
    this.dialer = deps.dialer ?? new Dialer({ nodeName: deps.nodeName });
    this.isLocal = this.dialer.isLocal;
  }

  async start(): Promise<void> {
    const { config, catalog, logger } = this.deps;
    try {
      await ensureListenAddress(this.host, config.commonConfig, logger);
      this.rules = this.deps.rules ?? (await chooseRules(this.cfg.interception, logger));
      if (this.rules && this.cfg.kernelForwarding) {
        if (this.deps.conntrack !== undefined) this.conntrack = this.deps.conntrack;
        else if (UdpConntrack.available()) this.conntrack = new UdpConntrack(logger.child('conntrack'));
        else logger.info('the conntrack tool is not installed: UDP services stay on the listener (apt-get install conntrack for kernel forwarding of UDP)');
      }
      // Its worker starts on the first bulk connection (splicer.ts), so nodes without one never pay for it.
      if (this.cfg.spliceBulkBytes > 0) this.splicer = new BulkSplicer({ logger: logger.child('splice'), idleTimeoutSec: this.cfg.tcpIdleTimeout });
      // Subscribe before the first sync: a change landing while it runs (the file source loading over a restored
      // snapshot, say) would otherwise be missed until the next change.
      this.unsubscribe = catalog.subscribe((snap, change) => {
        if (change.keys.services.size || change.keys.endpoints.size || change.keys.destinationRules.size) void this.queueSync(snap);
      });
      await this.queueSync(catalog.snapshot());
      await this.rulesRunning;
      if (this.rulesError) throw new EdgeMeshError('INTERNAL', `cannot install interception rules (${this.rules?.name}): ${this.rulesError}; set modules.edgeProxy.interception to "none" to run without them`);
      // Periodic resync repairs rules someone else flushed (a firewall reload, a kube-proxy restart).
      this.resync = setInterval(() => this.applyRules(this.mappings()), 30_000);
      this.resync.unref?.();
      if (this.cfg.socks5Proxy.enable) {
        this.socks5 = new TcpServicePort({
          host: this.host,
          port: this.cfg.socks5Proxy.listenPort,
          balancer: new Balancer({ ring: this.cfg.loadBalancer.consistentHash }),
          logger: logger.child('socks5'),
          // A node is reached through the tunnel when there is one (its agent then dials its own address).
          isLocal: (ep: LbEndpoint) => !this.dialer.remote || this.isLocal(ep),
          remote: this.dialer.remote,
          connectTimeoutMs: this.cfg.connectTimeoutMs,
          idleTimeoutSec: this.cfg.tcpIdleTimeout,
          maxAttempts: 1,
          splicer: this.splicer ?? undefined,
          bulkBytes: this.cfg.spliceBulkBytes,
          route: socks5Route({ nodeName: this.deps.nodeName, nodePorts: config.modules.edgeTunnel.nodePorts, catalog: () => catalog.snapshot(), logger: logger.child('socks5') }),
        });
        this.socks5.start();
        logger.info('SOCKS5 proxy listening', { address: `${this.host}:${this.socks5.port}` });
      }
      this.state = 'running';
      this.registerMetrics();
      logger.info('proxy listening', { address: this.host, servicePorts: this.entries.size, interception: this.rules?.name ?? 'none' });
    } catch (err) {
      this.state = 'failed';
      this.lastError = describeError(err);
      await this.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.resync) clearInterval(this.resync);
    await this.syncing;
    this.rulesPending = null;
    await this.rulesRunning;
    if (this.rules) {
      try {
        await this.rules.cleanup();
      } catch (err) {
        this.deps.logger.error('removing interception rules failed', { error: describeError(err) });
      }
    }
    this.rules = null;
    this.socks5?.stop();
    this.socks5 = null;
    for (const e of this.entries.values()) e.listener.stop();
    this.entries.clear();
    await this.splicer?.stop();
    this.splicer = null;
    if (this.state === 'running') this.state = 'stopped';
  }

  status(): { state: 'stopped' | 'running' | 'failed'; detail: string } {
    if (this.state !== 'running') return { state: this.state, detail: this.lastError || 'not started' };
    let active = 0;
    for (const e of this.entries.values()) active += e.listener.stats.active;
    const rules = this.rules ? `${this.rules.name} rules${this.rulesError ? ` FAILING: ${this.rulesError}` : ''}` : 'no interception';
    const kernel = this.kernelPorts();
    const spliced = this.splicer ? ` (${this.splicer.stats.active} on the splice worker)` : '';
    return { state: 'running', detail: `${this.entries.size} service ports on ${this.host} (${kernel} forwarded by the kernel), ${rules}, ${active} active connections${spliced}` };
  }

  ports(): (PortMapping & { path: string; endpoints: number; policy: string; warning: string | null; active: number })[] {
    const forwarding = ipForwarding();
    return [...this.entries.entries()].map(([service, e]) => {
      const m = this.mapping(service, e, forwarding);
      const path = !m.kernel ? 'proxy' : m.kernel.pods ? 'kernel' : 'kernel from the node, proxy from pods';
      const warning = e.balancer.conflict ?? e.policyWarning;
      return { ...m, path, endpoints: e.balancer.endpoints().length, policy: describePolicy(e.balancer.effectivePolicy()), warning, active: e.listener.stats.active };
    });
  }

  private mapping(service: string, e: Entry, forwarding: boolean): PortMapping {
    return { service, protocol: e.sp.protocol === 'UDP' ? 'UDP' : 'TCP', clusterIPs: e.svc.clusterIPs, externalIPs: e.svc.externalIPs, loadBalancerIPs: e.svc.loadBalancerIPs, port: e.sp.port, listenHost: this.host, listenPort: e.listener.port, kernel: this.kernelTarget(e, forwarding) };
  }

  /**
   * Whether the kernel can carry this service port by itself (docs/proxy.md#kernel-forwarding): only what a DNAT
   * rule can express exactly: round robin or random, and ClientIP affinity with round robin (the kernel keeps each
   * client address per endpoint with its timeout, as kube-proxy does). UDP too when the conntrack tool can delete
   * the entries a removed endpoint leaves (conntrack.ts). Consistent hashing by source address too, with
   * nftables (jhash into the ring's partition table). Other hash keys (HTTP), least request, IPv6 and endpoints
   * behind the tunnel stay on the listener.
   */
  private kernelTarget(e: Entry, forwarding: boolean): KernelTarget | null {
    if (!this.cfg.kernelForwarding || !this.rules) return null;
    if (e.sp.protocol !== 'TCP' && !(e.sp.protocol === 'UDP' && this.conntrack && !this.conntrack.broken)) return null;
    const policy = e.balancer.effectivePolicy();
    const sourceHash = policy.kind === 'consistent-hash' && policy.hash.kind === 'source-ip';
    const pick = sourceHash ? 'source-hash' : policy.kind;
    if (pick !== 'round-robin' && pick !== 'random' && pick !== 'source-hash') return null;
    const affinitySec = e.svc.sessionAffinity === 'ClientIP' ? e.svc.sessionAffinityTimeout : 0;
    if (affinitySec && (pick !== 'round-robin' || !this.kernelAffinity)) return null; // a policy conflict resolves to round robin
    const eps = e.balancer.endpoints();
    if (!eps.length || !eps.every((ep) => !ep.ip.includes(':') && this.isLocal(ep))) return null;
    let partitions: number[] | undefined;
    if (pick === 'source-hash') {
      // The kernel hashes into the ring's table where the backend can (nftables' jhash); a table past
      // MAX_KERNEL_PARTITIONS would make one rule of thousands of map elements: those stay on the listener.
      const table = e.balancer.partitionTable();
      if (!this.rules.hashesSourceAddress || !table?.length || table.length > MAX_KERNEL_PARTITIONS) return null;
      const index = new Map(eps.map((ep, i) => [ep.key, i]));
      partitions = table.map((ep) => index.get(ep.key) ?? 0);
    }
    // A loopback endpoint is reachable from the node only: pods' packets cannot be routed to it.
    return { endpoints: eps.map((ep) => ({ ip: ep.ip, port: ep.port })), pick, partitions, affinitySec, pods: forwarding && !eps.some((ep) => ep.ip.startsWith('127.')) };
  }

  private queueSync(snap: CatalogSnapshot): Promise<void> {
    this.syncing = this.syncing.then(() => this.sync(snap)).catch((err) => this.deps.logger.error('proxy sync failed (please report)', { error: describeError(err) }));
    return this.syncing;
  }

  /** Bring listeners, endpoints and policies in line with the catalog. */
  private async sync(snap: CatalogSnapshot): Promise<void> {
    const seen = new Set<string>();
    const rules = [...snap.destinationRules.values()];
    const domain = this.deps.config.modules.edgeDNS.clusterDomain;
    for (const svc of snap.services.values()) {
      if (!svc.proxied) continue;
      for (const sp of svc.ports) {
        if (sp.protocol === 'SCTP') continue; // rejected, as in the original
        const key = `${svc.namespace}/${svc.name}:${sp.name || sp.port}`;
        seen.add(key);
        const identity = JSON.stringify([sp.protocol, sp.port, sp.nodePort, svc.clusterIPs, svc.externalIPs, svc.loadBalancerIPs, svc.sessionAffinity]);
        let e = this.entries.get(key);
        if (e && e.identity !== identity) {
          e.listener.stop();
          this.entries.delete(key);
          e = undefined;
        }
        if (!e) {
          const balancer = new Balancer({ ring: this.cfg.loadBalancer.consistentHash });
          const common = { host: this.host, port: 0, balancer, logger: this.deps.logger.child(key), isLocal: this.isLocal, remote: this.dialer.remote };
          const listener = sp.protocol === 'UDP'
            ? new UdpServicePort({ ...common, idleTimeoutMs: this.cfg.udpIdleTimeout * 1000, maxSessions: this.cfg.udpMaxSessions, connectTimeoutMs: this.cfg.connectTimeoutMs })
            : new TcpServicePort({ ...common, connectTimeoutMs: this.cfg.connectTimeoutMs, idleTimeoutSec: this.cfg.tcpIdleTimeout, maxAttempts: this.cfg.maxDialAttempts, splicer: this.splicer ?? undefined, bulkBytes: this.cfg.spliceBulkBytes });
          try {
            await listener.start();
          } catch (err) {
            this.deps.logger.error('cannot listen for a service port', { service: key, error: describeError(err) });
            continue;
          }
          e = { svc, sp, balancer, listener, identity, policyWarning: null };
          this.entries.set(key, e);
        }
        e.svc = svc;
        e.sp = sp;
        e.balancer.setEndpoints(readyEndpoints(snap, svc, sp));
        const rule = ruleFor(svc, rules, domain);
        const parsed = rule ? parsePolicy(rule.spec) : { policy: { kind: 'round-robin' as const } };
        const warning = rule && 'warning' in parsed && parsed.warning ? `DestinationRule ${rule.namespace}/${rule.name}: ${parsed.warning}` : null;
        if (warning && warning !== e.policyWarning) this.deps.logger.warn(warning, { service: key });
        e.policyWarning = warning;
        e.balancer.setPolicy(parsed.policy, { enabled: svc.sessionAffinity === 'ClientIP', timeoutSec: svc.sessionAffinityTimeout });
        if (e.balancer.conflict) this.deps.logger.debug(e.balancer.conflict, { service: key });
      }
    }
    for (const [key, e] of this.entries) {
      if (seen.has(key)) continue;
      e.listener.stop();
      this.entries.delete(key);
    }
    this.applyRules(this.mappings());
  }

  /** How many service ports the kernel forwards now. */
  private kernelPorts(): number {
    return this.rules ? this.mappings().filter((m) => m.kernel).length : 0;
  }

  private mappings(): PortMapping[] {
    const forwarding = ipForwarding();
    return [...this.entries.entries()].map(([k, e]) => this.mapping(k, e, forwarding));
  }

  /** Apply the full desired rule set; calls while one runs coalesce into one more run with the latest set. */
  private applyRules(ports: PortMapping[]): void {
    const rules = this.rules;
    if (!rules) return;
    if (this.rulesRunning) {
      this.rulesPending = ports;
      return;
    }
    this.rulesRunning = (async () => {
      let next: PortMapping[] | null = ports;
      while (next) {
        this.rulesPending = null;
        try {
          await rules.apply(next);
          if (this.rulesError) this.deps.logger.info('interception rules applied again');
          this.rulesError = null;
          // Only once the new rules are in: an entry deleted before would be recreated by the old ones.
          await this.conntrack?.sync(next).catch((err) => this.deps.logger.warn('UDP conntrack cleanup failed', { error: describeError(err) }));
          if (this.conntrack?.broken && next.some((p) => p.protocol === 'UDP' && p.kernel)) {
            next = this.mappings(); // UDP back on the listener (kernelTarget now says so)
            continue;
          }
        } catch (err) {
          if (this.kernelAffinity && next.some((p) => (p.kernel?.affinitySec ?? 0) > 0)) {
            // Sets with timeouts updated from the packet path (nft) or the recent match (iptables) are missing on
            // some kernels: those services keep their affinity on the listener, the rest stays as it was.
            this.kernelAffinity = false;
            this.deps.logger.warn('the kernel refused the ClientIP-affinity rules; services with sessionAffinity: ClientIP go through the listener', { error: describeError(err) });
            next = this.mappings();
            continue;
          }
          if (describeError(err) !== this.rulesError) this.deps.logger.error('applying interception rules failed; retrying on the next change or resync', { error: describeError(err) });
          this.rulesError = describeError(err);
        }
        next = this.rulesPending;
      }
      this.rulesRunning = null;
    })();
  }

  private registerMetrics(): void {
    const m = this.deps.metrics;
    if (!m) return;
    const sum = (f: (e: Entry) => number) => () => [...this.entries.values()].reduce((a, e) => a + f(e), 0);
    m.gauge('edgemesh_proxy_service_ports', 'Service ports with a listener').set(() => this.entries.size);
    m.gauge('edgemesh_proxy_kernel_service_ports', 'Service ports the kernel forwards straight to their endpoints').set(() => this.kernelPorts());
    m.gauge('edgemesh_proxy_connections_active', 'Proxied TCP connections open now').set(sum((e) => e.listener.stats.active));
    m.counterFrom('edgemesh_proxy_connections_total', 'Proxied TCP connections accepted').set(sum((e) => e.listener.stats.accepted));
    const tcp = (f: (s: TcpServicePort['stats']) => number) => sum((e) => (e.listener instanceof TcpServicePort ? f(e.listener.stats) : 0));
    const udp = (f: (s: UdpServicePort['stats']) => number) => sum((e) => (e.listener instanceof UdpServicePort ? f(e.listener.stats) : 0));
    m.counterFrom('edgemesh_proxy_dial_failures_total', 'Endpoint dials that failed').set(tcp((s) => s.dialFailures));
    m.counterFrom('edgemesh_proxy_bytes_total', 'TCP bytes proxied').set(tcp((s) => s.bytesUp + s.bytesDown));
    m.counterFrom('edgemesh_proxy_udp_datagrams_total', 'UDP datagrams proxied').set(udp((s) => s.datagramsUp + s.datagramsDown));
    m.counterFrom('edgemesh_proxy_udp_dropped_total', 'UDP datagrams dropped').set(udp((s) => s.dropped));
    m.counterFrom('edgemesh_proxy_udp_conntrack_deleted_total', 'UDP conntrack entries deleted because their endpoint left').set(() => this.conntrack?.deleted ?? 0);
    m.counterFrom('edgemesh_proxy_spliced_connections_total', 'Bulk TCP connections handed to the splice(2) worker').set(() => this.splicer?.stats.handedOver ?? 0);
    m.gauge('edgemesh_proxy_spliced_connections_active', 'Connections on the splice(2) worker now').set(() => this.splicer?.stats.active ?? 0);
  }
}
