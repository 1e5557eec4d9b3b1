/**
 * The composition root: builds the node's modules from a loaded config, starts them in order and stops them in
 * reverse. Nothing else wires modules together. Used by both `edgemesh agent` and `edgemesh gateway` (role).
 *
 *   const agent = new Agent(loaded, { logger })
 *   await agent.start()    // throws EdgeMeshError on a fatal start problem (port in use, bad kubeconfig…)
 *   await agent.stop()     // releases every socket, timer and file watch
 */
import { existsSync, readFileSync, watch } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Catalog } from './catalog/catalog.ts';
import type { ConvertOptions } from './catalog/convert.ts';
import { catalogDebugView } from './catalog/debug-view.ts';
import { EXAMPLE_CATALOG } from './catalog/example.ts';
import { SnapshotWriter, loadSnapshot } from './catalog/snapshot.ts';
import { FileSource } from './catalog/sources/file.ts';
import type { KubeSource } from './catalog/sources/kube.ts';
import type { LoadedConfig } from './config/load.ts';
import type { AgentConfig } from './config/schema-edgemesh.ts';
import { dnsListenAddress, proxyListenAddress } from './config/load.ts';
import type { DnsModule } from './dns/index.ts';
import type { GatewayModule, GatewayStatus } from './gateway/index.ts';
import type { BridgeGuard } from './net/guard.ts';
import type { ProxyModule } from './proxy/index.ts';
import { Dialer } from './dial/route.ts';
import type { TunnelModule, TunnelStatus } from './tunnel/index.ts';
// The Kubernetes client, libp2p and each module are imported when the config turns them on (dynamic imports
// below; the binary is built with code splitting): a standalone node without the tunnel never loads either
// library, and start-up and idle memory pay only for what runs.
import { EdgeMeshError, describeError } from './errors.ts';
import { AdminServer, type Readiness } from './obs/admin.ts';
import type { Logger } from './obs/logger.ts';
import { MetricsRegistry } from './obs/metrics.ts';
import { type PriorityState, applyNice } from './priority.ts';
import { VERSION } from './version.ts';
import { getPriority } from 'node:os';

export interface ModuleStatus {
  name: string;
  enabled: boolean;
  state: 'stopped' | 'starting' | 'running' | 'failed' | 'not-built';
  detail: string;
}

export interface AgentStatus {
  version: string;
  role: LoadedConfig['role'];
  nodeName: string;
  mode: LoadedConfig['mode'];
  config: string;
  pid: number;
  startedAt: string;
  /** ms from the process's start until every module ran, by phase (load: runtime, code and config); null while starting. */
  startup: { ms: number; phases: Record<string, number> } | null;
  /** The process's CPU priority: the nice value asked for (commonConfig.nice), the one it runs at, and why not. */
  nice: PriorityState;
  uptimeSeconds: number;
  ready: Readiness;
  catalog: ReturnType<Catalog['state']> & {
    source: unknown;
    snapshot: { path: string | null; savedAt: string | null; error: string | null; restoredFrom: string | null };
  };
  modules: ModuleStatus[];
  /** The proxy's service ports, when the proxy runs. */
  proxy?: ReturnType<ProxyModule['ports']>;
  tunnel?: TunnelStatus;
  /** The bridge guard, when it runs (net/guard.ts). */
  bridgeGuard?: ReturnType<BridgeGuard['status']>;
  /** The gateway's addresses, listeners and routes, when it runs. */
  gateway?: GatewayStatus;
}

export interface AgentDeps {
  logger: Logger;
  metrics?: MetricsRegistry;
  /** Reads the config file again (same flags and environment); enables live reload of the relay list. */
  reload?: () => LoadedConfig;
}


export class Agent {
  readonly catalog: Catalog;
  readonly metrics: MetricsRegistry;
  private readonly log: Logger;
  private fileSource: FileSource | null = null;
  private kubeSource: KubeSource | null = null;
  private snapshotWriter: SnapshotWriter | null = null;
  private admin: AdminServer | null = null;
  private dns: DnsModule | null = null;
  private proxy: ProxyModule | null = null;
  private tunnel: TunnelModule | null = null;
  private guard: BridgeGuard | null = null;
  private gateway: GatewayModule | null = null;
  private restoredFrom: string | null = null;
  private readonly startedAt = new Date();
  private priority: PriorityState | null = null;
  /** Milliseconds from the process's start to the end of start(), and the share of each phase. */
  private startup: { ms: number; phases: Record<string, number> } | null = null;
  private readonly ac = new AbortController();
  private started = false;
  /** Times this node found its Node bound to another peer ID and left it (edgemesh_tunnel_binding_conflicts_total). */
  private bindingConflicts = 0;

  constructor(readonly loaded: LoadedConfig, private readonly deps: AgentDeps) {
    this.log = deps.logger;
    this.metrics = deps.metrics ?? new MetricsRegistry();
    this.catalog = new Catalog({ logger: this.log.child('catalog') });
    this.registerMetrics();
    this.metrics.counterFrom('edgemesh_tunnel_binding_conflicts_total', 'Starts that found this Node bound to another tunnel peer ID and did not overwrite it').set(() => this.bindingConflicts);
  }

  get adminUrl(): string | null {
    return this.admin?.url ?? null;
  }

  private convertOptions(): ConvertOptions {
    const c = this.loaded.config;
    return { serviceFilterMode: 'edgeProxy' in c.modules ? (c as AgentConfig).modules.edgeProxy.serviceFilterMode : 'FilterIfLabelExists' };
  }

  async start(): Promise<void> {
    const { loaded } = this;
    // Start-up by phase, in ms: `load` is from the process's start (runtime, code, config) to here.
    let last = performance.now();
    const phases: Record<string, number> = { load: Math.round(last) };
    const phase = (name: string): void => {
      const now = performance.now();
      phases[name] = Math.round(now - last);
      last = now;
    };
    this.log.info(`edgemesh ${loaded.role} ${VERSION} starting`, { node: loaded.nodeName, mode: loaded.mode, config: loaded.source });
    const nice = loaded.config.commonConfig.nice;
    if (nice !== 0) {
      this.priority = applyNice(nice);
      if (this.priority.error) {
        // As root (without CAP_SYS_NICE) this is a deployment to fix; a user's own test run cannot do it anyway.
        this.log[process.getuid?.() === 0 ? 'warn' : 'info'](`cannot run at nice ${nice} (${this.priority.error}): when the board's workloads keep the CPUs busy, the proxy and the tunnel get only a fair share of one core`, { nice: this.priority.actual, fix: 'run as root or with CAP_SYS_NICE (AmbientCapabilities=CAP_SYS_NICE), or set commonConfig.nice: 0 to accept it' });
      }
    }
    await this.ensureStateDir();

    // Admin first: /healthz answers and /readyz explains while the catalog loads.
    if (loaded.admin) {
      this.admin = new AdminServer({
        host: loaded.admin.host,
        port: loaded.admin.port,
        logger: this.log.child('admin'),
        metrics: this.metrics,
        readiness: () => this.readiness(),
        status: () => this.status(),
        debug: {
          '/debug/catalog': () => catalogDebugView(this.catalog.snapshot()),
          '/debug/proxy': () => this.proxy?.ports() ?? [],
          '/debug/tunnel': () => this.tunnel?.describe() ?? null,
          '/debug/gateway': () => this.gateway?.status() ?? null,
        },
      });
      this.admin.start();
    }

    await this.restoreSnapshot();
    if (loaded.snapshotPath) {
      this.snapshotWriter = new SnapshotWriter({ catalog: this.catalog, path: loaded.snapshotPath, nodeName: loaded.nodeName, logger: this.log.child('snapshot') });
      this.snapshotWriter.start();
    }

    if (loaded.mode === 'standalone') {
      const path = loaded.catalogFile!;
      if (loaded.embedded && !existsSync(path)) {
        await mkdir(dirname(path), { recursive: true });
        await writeFile(path, EXAMPLE_CATALOG, { mode: 0o644 });
        this.log.info('wrote an example catalog for the embedded default; edit it to add services', { path });
      }
      this.fileSource = new FileSource({ path, catalog: this.catalog, logger: this.log.child('catalog.file'), convert: this.convertOptions() });
      await this.fileSource.start();
      // The file's objects are resolved now, not on the next turn: the modules start from the whole catalog
      // (and their start-up logs count what it holds).
      this.catalog.flush();
    } else {
      const { KubeSource, apiHint, buildKubeConfig } = await import('./catalog/sources/kube.ts');
      const kc = buildKubeConfig(loaded.mode, loaded.config.kubeAPIConfig);
      this.kubeSource = new KubeSource({ kc, role: loaded.role, catalog: this.catalog, logger: this.log.child('catalog.kube'), convert: this.convertOptions(), hint: apiHint(loaded.mode, loaded.config.kubeAPIConfig) });
      this.kubeSource.start();
    }

    phase('catalog');
    // The tunnel (both roles), then the agent's modules, then the gateway (both roles) on the same Dialer.
    const tc = loaded.config.modules.edgeTunnel;
    if (tc.enable) {
      const [{ loadOrCreateIdentity }, { loadPsk }, { applyLibraryPatches }, { TunnelModule, PEER_ID_ANNOTATION }] = await Promise.all([
        import('./tunnel/identity.ts'), import('./tunnel/psk.ts'), import('./tunnel/patches/index.ts'), import('./tunnel/index.ts'),
      ]);
      const id = await loadOrCreateIdentity(loaded.stateDir, this.log.child('identity'));
      const psk = tc.psk.enable ? await loadPsk(tc.psk.path, this.log.child('tunnel')) : null;
      if (!psk) this.log.warn('the tunnel runs without a pre-shared key (modules.edgeTunnel.psk.enable is false): any host that can reach port ' + tc.listenPort + ' can join');
      applyLibraryPatches(this.log.child('tunnel'));
      this.tunnel = new TunnelModule({ config: tc, nodeName: loaded.nodeName, catalog: this.catalog, privateKey: id.privateKey, psk, logger: this.log.child('tunnel'), metrics: this.metrics });
      await this.tunnel.start();
      if (this.kubeSource) void this.publishPeerId(this.kubeSource, PEER_ID_ANNOTATION, loaded.nodeName, id.peerId, tc.takeOverBinding);
      this.watchConfig();
      phase('tunnel');
    }
    // The one decision of how endpoints are reached: the tunnel is handed in, so dial/ never imports it.
    const dialer = new Dialer({ nodeName: loaded.nodeName, directCIDRs: tc.directCIDRs, remote: this.tunnel ?? undefined });
    if (loaded.role === 'agent') {
      const cfg = loaded.config as AgentConfig;
      await this.startGuard(cfg);
      if (this.guard) phase('guard');
      if (cfg.modules.edgeProxy.enable) {
        const { ProxyModule } = await import('./proxy/index.ts');
        this.proxy = new ProxyModule({ config: cfg, catalog: this.catalog, nodeName: loaded.nodeName, logger: this.log.child('proxy'), metrics: this.metrics, dialer });
        await this.proxy.start();
        phase('proxy');
      }
      if (cfg.modules.edgeDNS.enable) {
        const { DnsModule } = await import('./dns/index.ts');
        this.dns = new DnsModule({ config: cfg, catalog: this.catalog, logger: this.log.child('dns'), metrics: this.metrics });
        await this.dns.start();
        phase('dns');
      }
    }
    const gc = loaded.config.modules.edgeGateway;
    if (gc.enable) {
      const domain = loaded.role === 'agent' ? (loaded.config as AgentConfig).modules.edgeDNS.clusterDomain : 'cluster.local';
      const { GatewayModule } = await import('./gateway/index.ts');
      this.gateway = new GatewayModule({ config: { ...gc, labels: await this.gatewayLabels(gc.labels) }, catalog: this.catalog, dialer, logger: this.log.child('gateway'), metrics: this.metrics, clusterDomain: domain });
      await this.gateway.start();
      phase('gateway');
    }

    this.warnUnbuiltModules();
    this.started = true;
    this.startup = { ms: Math.round(performance.now()), phases };
    this.log.info('started', { admin: this.admin?.url ?? 'disabled', startupMs: this.startup.ms, phases: Object.entries(phases).map(([k, v]) => `${k} ${v}`).join(', ') });
  }

  /**
   * The bridge guard (net/guard.ts) when DNS or the proxy listens on the bridge IP: only the node and its pods
   * reach those listeners. Without root, or with neither nft nor iptables, it is skipped with a warning: the
   * listeners still work, as the original's do, reachable by LAN neighbours.
   */
  private async startGuard(cfg: AgentConfig): Promise<void> {
    const c = cfg.commonConfig;
    const onBridge = (cfg.modules.edgeDNS.enable && dnsListenAddress(cfg) === c.bridgeDeviceIP) || (cfg.modules.edgeProxy.enable && proxyListenAddress(cfg) === c.bridgeDeviceIP);
    if (!onBridge || c.bridgeGuard === 'off') return;
    if (process.getuid?.() !== 0) {
      this.log.warn('not root: no bridge guard; LAN neighbours that route the bridge IP here reach its listeners', { ip: c.bridgeDeviceIP });
      return;
    }
    const { BridgeGuard, chooseGuardBackend } = await import('./net/guard.ts');
    const backend = await chooseGuardBackend();
    if (!backend) {
      this.log.warn('neither nft nor iptables is installed: no bridge guard (apt-get install nftables)', { ip: c.bridgeDeviceIP });
      return;
    }
    const node = this.loaded.nodeName;
    this.guard = new BridgeGuard({
      ip: c.bridgeDeviceIP,
      bridgeDevice: c.bridgeDeviceName,
      extra: c.bridgeGuardInterfaces,
      nodeAddresses: () => (this.catalog.snapshot().nodes.get(node)?.addresses ?? []).filter((a) => a.type === 'InternalIP' || a.type === 'ExternalIP').map((a) => a.address),
      logger: this.log.child('guard'),
      metrics: this.metrics,
      backend,
    });
    await this.guard.start();
  }

  /**
   * The labels a Gateway's selector is matched against: this gateway's Pod labels when it runs in a pod of the
   * cluster (POD_NAME and POD_NAMESPACE from the downward API), else modules.edgeGateway.labels.
   */
  private async gatewayLabels(fromConfig: Record<string, string>): Promise<Record<string, string>> {
    const name = process.env.POD_NAME, ns = process.env.POD_NAMESPACE;
    if (!this.kubeSource || !name || !ns) return fromConfig;
    const r = await this.kubeSource.podLabels(ns, name);
    if ('error' in r) {
      this.log.warn('cannot read this gateway\'s Pod labels; using modules.edgeGateway.labels', { pod: `${ns}/${name}`, error: r.error, fix: 'grant "get" on pods in its namespace' });
      return fromConfig;
    }
    this.log.info('gateway labels from its Pod', { pod: `${ns}/${name}`, labels: Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(',') });
    return r.labels;
  }

  /** Stop everything; safe to call twice and after a failed start. */
  async stop(): Promise<void> {
    this.ac.abort();
    const steps: [string, () => Promise<void> | void][] = [
      ['gateway', async () => { await this.gateway?.stop(); }],
      ['dns', async () => { await this.dns?.stop(); }],
      ['proxy', async () => { await this.proxy?.stop(); }],
      ['bridge guard', async () => { await this.guard?.stop(); }],
      ['tunnel', async () => { await this.tunnel?.stop(); }],
      ['catalog source', async () => { await this.fileSource?.stop(); await this.kubeSource?.stop(); }],
      ['snapshot', async () => { await this.snapshotWriter?.stop(); }],
      ['admin', async () => { await this.admin?.stop(); }],
    ];
    for (const [name, fn] of steps) {
      try {
        await fn();
      } catch (err) {
        this.log.error(`stopping ${name} failed`, { error: describeError(err) });
      }
    }
    this.fileSource = this.kubeSource = this.snapshotWriter = this.admin = this.dns = this.proxy = this.guard = this.tunnel = this.gateway = null;
    if (this.started) this.log.info('stopped');
    this.started = false;
  }

  readiness(): Readiness {
    const st = this.catalog.state();
    if (!st.ready) return { ready: false, reason: `catalog not loaded: ${st.detail}` };
    const down = this.builtModules().filter((m) => m.enabled && m.state !== 'running');
    if (down.length) return { ready: false, reason: down.map((m) => `${m.name} ${m.state}: ${m.detail}`).join('; ') };
    if (st.origin === 'snapshot') return { ready: true, reason: `serving the catalog snapshot from ${this.restoredFrom ?? 'disk'} (${st.detail})` };
    return { ready: true, reason: `catalog from ${st.origin}: ${st.detail}` };
  }

  status(): AgentStatus {
    const l = this.loaded;
    return {
      version: VERSION,
      role: l.role,
      nodeName: l.nodeName,
      mode: l.mode,
      config: l.source,
      pid: process.pid,
      startedAt: this.startedAt.toISOString(),
      startup: this.startup,
      nice: this.priority ?? { wanted: this.loaded.config.commonConfig.nice, actual: getPriority(0), error: null },
      uptimeSeconds: Math.round((Date.now() - this.startedAt.getTime()) / 1000),
      ready: this.readiness(),
      catalog: {
        ...this.catalog.state(),
        source: this.fileSource ? { kind: 'file', ...this.fileSource.status } : this.kubeSource ? { kind: 'kubernetes', ...this.kubeSource.status() } : null,
        snapshot: { path: l.snapshotPath, savedAt: this.snapshotWriter?.status().savedAt ?? null, error: this.snapshotWriter?.status().error ?? null, restoredFrom: this.restoredFrom },
      },
      modules: this.modules(),
      ...(this.proxy ? { proxy: this.proxy.ports() } : {}),
      ...(this.tunnel ? { tunnel: this.tunnel.describe() } : {}),
      ...(this.guard ? { bridgeGuard: this.guard.status() } : {}),
      ...(this.gateway ? { gateway: this.gateway.status() } : {}),
    };
  }

  private modules(): ModuleStatus[] {
    const c = this.loaded.config;
    const out: ModuleStatus[] = [
      { name: 'catalog', enabled: true, state: this.catalog.state().ready ? 'running' : 'starting', detail: this.catalog.state().detail },
      { name: 'admin', enabled: !!this.loaded.admin, state: this.admin ? 'running' : 'stopped', detail: this.admin?.url ?? 'disabled (commonConfig.adminAddress is "")' },
    ];
    const built = this.builtModules();
    const m = c.modules as Record<string, { enable?: boolean }>;
    for (const name of Object.keys(m)) {
      const b = built.find((x) => x.name === name);
      // Modules still to come (proxy, tunnel, gateway, CNI) are listed honestly until they exist.
      out.push(b ?? { name, enabled: !!m[name]?.enable, state: 'not-built', detail: 'not in this build yet' });
    }
    return out;
  }

  /** Modules this build has, with their state. */
  private builtModules(): ModuleStatus[] {
    const one = (name: string, enabled: boolean, mod: { status(): Pick<ModuleStatus, 'state' | 'detail'> } | null): ModuleStatus => ({
      name,
      enabled,
      ...(mod?.status() ?? { state: 'stopped' as const, detail: enabled ? 'not started' : 'disabled' }),
    });
    const c = this.loaded.config;
    const gateway = this.gateway ? { status: () => this.gateway!.moduleState() } : null;
    const both = [one('edgeTunnel', c.modules.edgeTunnel.enable, this.tunnel), one('edgeGateway', c.modules.edgeGateway.enable, gateway)];
    if (this.loaded.role !== 'agent') return both;
    const m = (c as AgentConfig).modules;
    return [one('edgeDNS', m.edgeDNS.enable, this.dns), one('edgeProxy', m.edgeProxy.enable, this.proxy), ...both];
  }

  private warnUnbuiltModules(): void {
    const m = this.loaded.config.modules as Record<string, { enable?: boolean }>;
    const built = new Set(this.builtModules().map((b) => b.name));
    const on = Object.keys(m).filter((k) => m[k]?.enable && !built.has(k));
    if (on.length) this.log.warn('enabled modules are not in this build yet and will not run', { modules: on.join(',') });
  }

  /**
   * Live reload of modules.edgeTunnel.relayNodes when the config file changes (the original watches the file for
   * exactly this). A directory watch catches ConfigMap symlink swaps; a 2 s stat poll catches what it misses.
   * Other keys need a restart; a broken edit is logged and ignored.
   */
  private watchConfig(): void {
    const path = this.loaded.source;
    const reload = this.deps.reload;
    if (!reload || !existsSync(path)) return;
    let last = '';
    try {
      last = readFileSync(path, 'utf8');
    } catch {
      return;
    }
    let timer: ReturnType<typeof setTimeout> | null = null;
    const check = (): void => {
      timer = null;
      let text: string;
      try {
        text = readFileSync(path, 'utf8');
      } catch {
        return;
      }
      if (text === last) return;
      last = text;
      let next: LoadedConfig;
      try {
        next = reload();
      } catch (err) {
        this.log.warn('config file changed but does not load; keeping the running config', { path, error: describeError(err) });
        return;
      }
      const relays = (next.config as AgentConfig).modules.edgeTunnel.relayNodes;
      if (JSON.stringify(relays) !== JSON.stringify((this.loaded.config as AgentConfig).modules.edgeTunnel.relayNodes)) {
        (this.loaded.config as AgentConfig).modules.edgeTunnel.relayNodes = relays;
        void this.tunnel?.setRelayNodes(relays);
      }
    };
    const schedule = (): void => {
      if (!timer) timer = setTimeout(check, 200);
    };
    try {
      const w = watch(dirname(path), { signal: this.ac.signal }, schedule);
      w.on('error', () => {});
    } catch {
      // no inotify: the poll below still works
    }
    const poll = setInterval(schedule, 2000);
    poll.unref?.();
    this.ac.signal.addEventListener('abort', () => {
      clearInterval(poll);
      if (timer) clearTimeout(timer);
    });
  }

  /**
   * Bind this node's name to its tunnel peer ID where everyone reads it: an annotation on our Node object.
   * Retries with backoff while the API is unreachable; without RBAC for it, says how to do it by hand.
   */
  private async publishPeerId(source: KubeSource, annotation: string, nodeName: string, peerId: string, takeOver: boolean): Promise<void> {
    const log = this.log.child('tunnel');
    const byHand = `kubectl annotate node ${nodeName} ${annotation}=${peerId}`;
    for (let delay = 1000; !this.ac.signal.aborted; delay = Math.min(delay * 2, 60_000)) {
      const cur = await source.nodeAnnotation(nodeName, annotation);
      if ('value' in cur && cur.value === peerId) {
        log.info('the tunnel peer ID is already published on this node', { node: nodeName, peerId });
        return;
      }
      if ('value' in cur && cur.value !== null && !takeOver) {
        // Never overwrite another binding: whoever can rebind a node receives its tunnel traffic.
        this.bindingConflicts++;
        log.error('this Node is bound to another tunnel peer ID; not overwriting it: other nodes will refuse this one', {
          node: nodeName, bound: cur.value, ours: peerId,
          fix: `if this node's identity key was replaced on purpose: ${byHand} --overwrite (or set modules.edgeTunnel.takeOverBinding: true); otherwise find the host that holds this node's binding`,
        });
        return;
      }
      if ('forbidden' in cur && cur.forbidden) {
        log.warn('not allowed to read this Node: the peer ID is not published; other nodes cannot verify this one until it is bound by hand', { error: cur.error, fix: byHand });
        return;
      }
      const r = 'value' in cur ? await source.annotateNode(nodeName, { [annotation]: peerId }) : { forbidden: false, error: cur.error };
      if (!r) {
        log.info('published the tunnel peer ID on this node', { node: nodeName, annotation: annotation, peerId, ...('value' in cur && cur.value ? { replaced: cur.value } : {}) });
        return;
      }
      if (r.forbidden) {
        // 401/403: RBAC; 405: a server (an edge meta server, say) that does not take PATCH at all. Retrying helps neither.
        log.warn('cannot annotate this Node: other nodes cannot verify this one until it is done by hand', {
          error: r.error, fix: `${byHand} (or grant "patch" on this Node: docs/security.md)`,
        });
        return;
      }
      log.warn('could not publish the tunnel peer ID yet; retrying', { error: r.error, retryInMs: delay });
      await new Promise((res) => setTimeout(res, delay).unref?.());
    }
  }


  private async ensureStateDir(): Promise<void> {
    try {
      await mkdir(this.loaded.stateDir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new EdgeMeshError('STATE_DIR', `cannot create the state directory ${this.loaded.stateDir}: ${describeError(err)}; set commonConfig.stateDir to a writable directory`);
    }
  }

  private async restoreSnapshot(): Promise<void> {
    const path = this.loaded.snapshotPath;
    if (!path) return;
    const t0 = performance.now();
    try {
      const snap = await loadSnapshot(path);
      if (!snap) return;
      this.catalog.replace(snap.objects, 'snapshot', `restored snapshot saved ${snap.savedAt}`);
      this.catalog.flush();
      this.restoredFrom = `${path} (saved ${snap.savedAt})`;
      this.log.info('catalog restored from the snapshot until the live source syncs', { path, savedAt: snap.savedAt, services: snap.objects.services.length, ms: Math.round(performance.now() - t0) });
    } catch (err) {
      this.log.error('ignoring the catalog snapshot', { error: describeError(err), fix: 'it will be rewritten after the next sync' });
    }
  }

  private registerMetrics(): void {
    const m = this.metrics;
    const apply = m.histogram('edgemesh_catalog_apply_seconds', 'Time from a source event to subscribers notified', [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1]);
    const updates = m.counter('edgemesh_catalog_updates_total', 'Catalog change events delivered');
    this.catalog.subscribe((_s, change) => {
      updates.inc();
      apply.observe((performance.now() - change.firstEventAt) / 1000);
    });
    const objects = m.gauge('edgemesh_catalog_objects', 'Objects in the catalog by kind');
    for (const kind of ['services', 'endpoints', 'nodes', 'destinationRules', 'gateways', 'virtualServices', 'secrets'] as const) {
      objects.set(() => this.catalog.snapshot()[kind].size, { kind });
    }
    m.gauge('edgemesh_catalog_ready', '1 when the catalog is synced or restored').set(() => (this.catalog.state().ready ? 1 : 0));
    m.gauge('process_resident_memory_bytes', 'Resident memory').set(() => process.memoryUsage.rss());
  }
}
