/**
 * The Kubernetes source: list+watch with @kubernetes/client-node informers against a kubeconfig, the in-cluster
 * service account, or KubeEdge's metaServer (JSON only: the metaServer does not speak protobuf).
 *
 * - Until every kind has listed once, the catalog keeps what it had (the snapshot); then one full replace, and
 *   watch deltas after that. So a restart while the API is down serves the snapshot, and the first good sync
 *   removes whatever was deleted meanwhile.
 * - client-node's ListWatch stops on any error; each informer is restarted here with capped exponential backoff.
 *   A 410 Gone makes ListWatch relist and emit deletes for vanished objects, so the catalog converges.
 * - EndpointSlices and v1 Endpoints are both watched; the catalog takes a service's slices when it has any,
 *   its Endpoints otherwise (a server that does not serve slices at all, 404, relies on Endpoints alone).
 * - Optional kinds (Nodes, istio CRDs, Secrets) that are not installed or not permitted (404/403) count as
 *   empty, are reported once, and are retried slowly, so a cluster without istio works (the original logs
 *   list errors forever there).
 */
import {
  CoreV1Api, CustomObjectsApi, DiscoveryV1Api, type Informer, KubeConfig, type KubernetesObject, type ObjectCache, makeInformer, PatchStrategy, setHeaderOptions,
} from '@kubernetes/client-node';
import { EdgeMeshError, describeError } from '../../errors.ts';
import type { KubeAPIConfig } from '../../config/schema-edgemesh.ts';
import type { Role, RunMode } from '../../config/load.ts';
import type { Logger } from '../../obs/logger.ts';
import type { Catalog } from '../catalog.ts';
import {
  type ConvertOptions, type Converted, convertEndpointSlice, convertEndpoints, convertIstio, convertNode, convertSecret,
  convertService,
} from '../convert.ts';
import { type Kind, emptyObjects, keyOf } from '../model.ts';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Build the client configuration for a run mode (docs/config.md: manual, cloud in-cluster, edge via the metaServer). */
export function buildKubeConfig(mode: RunMode, cfg: KubeAPIConfig): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (mode === 'manual') {
      if (cfg.kubeConfig) {
        kc.loadFromFile(cfg.kubeConfig);
        if (cfg.master) {
          const cur = kc.getCurrentCluster();
          if (!cur) throw new Error('the kubeconfig has no current cluster');
          kc.clusters = kc.clusters.map((c) => (c.name === cur.name ? { ...c, server: cfg.master } : c));
        }
      } else {
        kc.loadFromClusterAndUser({ name: 'edgemesh', server: cfg.master, skipTLSVerify: false }, { name: 'edgemesh' });
      }
    } else if (mode === 'cloud') {
      kc.loadFromCluster();
    } else if (mode === 'edge') {
      const sec = cfg.metaServer.security;
      let server = cfg.metaServer.server;
      if (sec.requireAuthorization) server = server.replace(/^http:\/\//, 'https://');
      const cluster = { name: 'kubeedge-cluster', server, skipTLSVerify: sec.requireAuthorization && sec.insecureSkipTLSVerify, ...(sec.requireAuthorization && !sec.insecureSkipTLSVerify ? { caFile: sec.tlsCaFile } : {}) };
      const user = sec.requireAuthorization
        ? { name: 'edgemesh', certFile: sec.tlsCertFile, keyFile: sec.tlsPrivateKeyFile, authProvider: { name: 'tokenFile', config: { tokenFile: `${SA_DIR}/token` } } }
        : { name: 'edgemesh' };
      kc.loadFromClusterAndUser(cluster, user);
    } else {
      throw new Error(`run mode ${mode} has no Kubernetes API`);
    }
  } catch (err) {
    throw new EdgeMeshError('KUBE_CONFIG', `cannot configure Kubernetes access (${mode} mode): ${describeError(err)}`, { cause: err });
  }
  // client-node refuses plain http unless skipTLSVerify is set; the metaServer default is plain http on
  // loopback, where there is no certificate to verify.
  kc.clusters = kc.clusters.map((c) => (c.server.startsWith('http://') ? { ...c, skipTLSVerify: true } : c));
  return kc;
}

interface KindSpec {
  kind: Kind;
  /** Shown in logs and status, e.g. "services". */
  label: string;
  path: string;
  list: () => Promise<{ items: KubernetesObject[]; metadata?: { resourceVersion?: string } }>;
  convert: (o: Record<string, unknown>) => Converted;
  /** Required kinds block readiness; optional ones count as empty when absent (404/403). */
  required: boolean;
}

type WatcherState = 'listing' | 'synced' | 'absent' | 'failing';

class KindWatcher {
  state: WatcherState = 'listing';
  lastError: string | null = null;
  /** Listed at least once, or known to be absent. */
  everSynced = false;
  /**
   * One informer for the watcher's whole life: restarting it resumes the watch from its resourceVersion, or
   * relists and emits deletes for objects that vanished meanwhile. A fresh informer would have an empty cache
   * and could never tell us what was deleted during an outage.
   */
  readonly informer: Informer<KubernetesObject> & ObjectCache<KubernetesObject>;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private backoffMs: number;
  private stopped = false;
  private errored = false;

  constructor(
    readonly spec: KindSpec,
    private readonly src: KubeSource,
  ) {
    this.backoffMs = src.minBackoffMs;
    this.informer = makeInformer(src.kc, spec.path, spec.list);
    const live = () => !this.stopped;
    this.informer.on('add', (o) => live() && src.onUpsert(this, o));
    this.informer.on('update', (o) => live() && src.onUpsert(this, o));
    this.informer.on('delete', (o) => live() && src.onDelete(this, o));
    this.informer.on('error', (err) => live() && this.onError(err));
  }

  start(): void {
    this.stopped = false;
    this.errored = false;
    // start() resolves after the list and the watch request; an error in between has already reached onError.
    void this.informer.start().then(() => {
      if (this.stopped || this.errored) return;
      this.backoffMs = this.src.minBackoffMs;
      if (this.lastError) this.src.log.info(`${this.spec.label}: connected again`);
      this.lastError = null;
      this.state = 'synced';
      this.src.onSynced(this);
    });
  }

  private onError(err: unknown): void {
    this.errored = true;
    const status = (err as { statusCode?: number }).statusCode ?? (err as { code?: unknown }).code;
    const msg = describeError(err);
    if (status === 404 && this.spec.kind === 'endpointSlices') {
      this.src.fallBackToEndpoints(this);
      return;
    }
    if ((status === 404 || status === 403) && !this.spec.required) {
      if (this.state !== 'absent') this.src.log.warn(`${this.spec.label}: not available (${status === 404 ? 'not served by the API' : 'forbidden'}); treating as empty`, { retryIn: '5m' });
      this.state = 'absent';
      this.lastError = msg;
      this.src.onSynced(this);
      this.schedule(5 * 60_000);
      return;
    }
    if (this.lastError !== msg) this.src.log.warn(`${this.spec.label}: list/watch failed; keeping the last known state`, { error: msg, retryInMs: this.backoffMs });
    this.lastError = msg;
    this.state = 'failing';
    this.src.onTrouble();
    this.schedule(this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.src.maxBackoffMs);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.retry) clearTimeout(this.retry);
    // Jitter spreads a fleet of edge nodes reconnecting after a cloud outage.
    this.retry = setTimeout(() => {
      this.retry = null;
      this.start();
    }, Math.round(ms * (0.8 + Math.random() * 0.4)));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    await this.informer.stop();
  }
}

export interface KubeSourceDeps {
  kc: KubeConfig;
  role: Role;
  catalog: Catalog;
  logger: Logger;
  convert: ConvertOptions;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** How the API is reached and what to do when it cannot be (apiHint), for status and the log. */
  hint?: { via: string; next: string };
}

/** The way out when the API cannot be reached at all, by run mode. */
export function apiHint(mode: RunMode, cfg: KubeAPIConfig): { via: string; next: string } {
  const standalone = 'or run without Kubernetes from a catalog file: edgemesh agent --catalog FILE (docs/catalog.md)';
  switch (mode) {
    case 'edge':
      return { via: `KubeEdge's metaServer at ${cfg.metaServer.server} (kubeAPIConfig.metaServer.server)`, next: `enable edgecore's metaServer (modules.metaManager.metaServer.enable: true) and check that it listens there, ${standalone}` };
    case 'cloud':
      return { via: 'the in-cluster service account (KUBERNETES_SERVICE_HOST)', next: `check the pod's network policy and RBAC, ${standalone}` };
    default:
      return { via: cfg.kubeConfig ? `the kubeconfig ${cfg.kubeConfig}${cfg.master ? ` with master ${cfg.master}` : ''}` : `kubeAPIConfig.master ${cfg.master}`, next: `check that address and credentials, ${standalone}` };
  }
}

/**
 * An API error in one line: the status code and the server's own message (client-node's text for an unexpected
 * status is "Unknown API Status Code!" followed by the whole body and every header).
 */
export function apiError(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'number') return shortError(describeError(e));
  let message = '';
  try {
    const body = (e as { body?: unknown }).body;
    const parsed = typeof body === 'string' ? (JSON.parse(body) as { message?: string }) : (body as { message?: string } | undefined);
    message = parsed?.message ?? '';
  } catch {
    // not JSON: the status alone
  }
  const what = code === 405 ? 'the server does not allow this method here' : code === 404 ? 'not found' : code === 403 ? 'forbidden' : code === 401 ? 'unauthorized' : `HTTP ${code}`;
  return `${what} (${code})${message ? `: ${message.slice(0, 200)}` : ''}`;
}

/** A connection error in our words (the HTTP client's "Is the computer able to access the url?" says nothing). */
function shortError(err: string): string {
  if (/ECONNREFUSED/.test(err)) return 'connection refused';
  if (/ETIMEDOUT|timed? ?out/i.test(err)) return 'timed out';
  if (/ENOTFOUND|EAI_AGAIN/.test(err)) return 'name not resolved';
  if (/ECONNRESET/.test(err)) return 'connection reset';
  return err.length > 200 ? `${err.slice(0, 200)}…` : err;
}

export interface KubeSourceStatus {
  server: string;
  synced: boolean;
  kinds: { kind: string; state: WatcherState; error: string | null }[];
}

export class KubeSource {
  readonly kc: KubeConfig;
  readonly log: Logger;
  readonly minBackoffMs: number;
  readonly maxBackoffMs: number;
  private watchers: KindWatcher[] = [];
  private initialDone = false;
  private readonly core: CoreV1Api;
  private readonly custom: CustomObjectsApi;
  private readonly discovery: DiscoveryV1Api;

  constructor(private readonly deps: KubeSourceDeps) {
    this.kc = deps.kc;
    this.log = deps.logger;
    this.minBackoffMs = deps.minBackoffMs ?? 1000;
    this.maxBackoffMs = deps.maxBackoffMs ?? 16_000;
    this.core = this.kc.makeApiClient(CoreV1Api);
    this.custom = this.kc.makeApiClient(CustomObjectsApi);
    this.discovery = this.kc.makeApiClient(DiscoveryV1Api);
  }

  /**
   * Merge-patch annotations onto a Node (the tunnel publishes its peer ID this way). Returns null on success, or
   * the reason; `forbidden` when RBAC does not allow it, so the caller stops retrying and tells the operator.
   */
  /** One annotation of a Node as the API server has it now (null: absent), or why it could not be read. */
  async nodeAnnotation(name: string, key: string): Promise<{ value: string | null } | { forbidden: boolean; error: string }> {
    try {
      const node = await this.core.readNode({ name });
      return { value: node.metadata?.annotations?.[key] ?? null };
    } catch (e) {
      const code = (e as { code?: number }).code;
      return { forbidden: code === 403 || code === 401 || code === 405, error: apiError(e) };
    }
  }

  async annotateNode(name: string, annotations: Record<string, string>): Promise<null | { forbidden: boolean; error: string }> {
    try {
      await this.core.patchNode({ name, body: { metadata: { annotations } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
      return null;
    } catch (e) {
      const code = (e as { code?: number }).code;
      return { forbidden: code === 403 || code === 401 || code === 405, error: apiError(e) };
    }
  }

  /** A Pod's labels (the gateway's own, found through the downward API's POD_NAME / POD_NAMESPACE). */
  async podLabels(namespace: string, name: string): Promise<{ labels: Record<string, string> } | { error: string }> {
    try {
      const pod = await this.core.readNamespacedPod({ name, namespace });
      return { labels: pod.metadata?.labels ?? {} };
    } catch (e) {
      return { error: apiError(e) };
    }
  }

  get server(): string {
    return this.kc.getCurrentCluster()?.server ?? '(none)';
  }

  private specs(): KindSpec[] {
    const opts = this.deps.convert;
    const istio = (plural: string, kind: Kind, label: string, k: string): KindSpec => ({
      kind, label, required: false, path: `/apis/networking.istio.io/v1alpha3/${plural}`,
      list: () => this.custom.listClusterCustomObject({ group: 'networking.istio.io', version: 'v1alpha3', plural }) as Promise<{ items: KubernetesObject[] }>,
      convert: (o) => ({ kind, value: convertIstio({ apiVersion: 'networking.istio.io/v1alpha3', ...o }, k) }) as Converted,
    });
    const specs: KindSpec[] = [
      { kind: 'services', label: 'services', required: true, path: '/api/v1/services', list: () => this.core.listServiceForAllNamespaces(), convert: (o) => ({ kind: 'services', value: convertService(o, opts) }) },
      { kind: 'endpointSlices', label: 'endpointslices', required: true, path: '/apis/discovery.k8s.io/v1/endpointslices', list: () => this.discovery.listEndpointSliceForAllNamespaces(), convert: (o) => ({ kind: 'endpointSlices', value: convertEndpointSlice(o) }) },
      this.endpointsSpec(),
      { kind: 'nodes', label: 'nodes', required: false, path: '/api/v1/nodes', list: () => this.core.listNode(), convert: (o) => ({ kind: 'nodes', value: convertNode(o) }) },
      istio('destinationrules', 'destinationRules', 'destinationrules', 'DestinationRule'),
    ];
    if (this.deps.role === 'gateway') {
      specs.push(
        istio('gateways', 'gateways', 'gateways', 'Gateway'),
        istio('virtualservices', 'virtualServices', 'virtualservices', 'VirtualService'),
        { kind: 'secrets', label: 'secrets', required: false, path: '/api/v1/secrets', list: () => this.core.listSecretForAllNamespaces(), convert: (o) => ({ kind: 'secrets', value: convertSecret(o) }) },
      );
    }
    return specs;
  }

  start(): void {
    this.log.info('watching the Kubernetes API', { server: this.server });
    this.deps.catalog.setDetail(`listing from ${this.server}`);
    this.watchers = this.specs().map((s) => new KindWatcher(s, this));
    for (const w of this.watchers) w.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.watchers.map((w) => w.stop()));
  }

  status(): KubeSourceStatus {
    return { server: this.server, synced: this.initialDone, kinds: this.watchers.map((w) => ({ kind: w.spec.label, state: w.state, error: w.lastError })) };
  }

  /**
   * The API does not serve EndpointSlices: v1 Endpoints (watched anyway, as optional) become required: readiness
   * waits for them. The slice watcher goes.
   */
  fallBackToEndpoints(w: KindWatcher): void {
    this.log.info('EndpointSlices are not served; using v1 Endpoints');
    void w.stop();
    const old = this.watchers.find((x) => x.spec.kind === 'endpoints');
    void old?.stop();
    const ep = new KindWatcher({ ...this.endpointsSpec(), required: true }, this);
    this.watchers = this.watchers.filter((x) => x !== w && x !== old).concat(ep);
    ep.start();
  }

  /**
   * v1 Endpoints, watched beside EndpointSlices: the catalog takes a service's slices when it has any and its
   * Endpoints otherwise, so a service whose slices are missing (no mirroring controller, an older edge meta
   * server answering the slice list empty) still has endpoints. Optional: forbidden or absent counts as empty.
   */
  private endpointsSpec(): KindSpec {
    return { kind: 'endpoints', label: 'endpoints', required: false, path: '/api/v1/endpoints', list: () => this.core.listEndpointsForAllNamespaces(), convert: (o) => ({ kind: 'endpoints', value: convertEndpoints(o) }) };
  }

  onUpsert(w: KindWatcher, o: KubernetesObject): void {
    if (!this.initialDone) return; // the initial replace reads the informer caches
    const c = this.convertOne(w, o);
    if (c) this.deps.catalog.upsert(c);
  }

  onDelete(w: KindWatcher, o: KubernetesObject): void {
    if (!this.initialDone) return;
    const m = o.metadata ?? {};
    this.deps.catalog.remove(w.spec.kind, w.spec.kind === 'nodes' ? (m.name ?? '') : `${m.namespace ?? 'default'}/${m.name ?? ''}`);
  }

  onSynced(w: KindWatcher): void {
    const first = !w.everSynced;
    w.everSynced = true;
    if (this.watchers.some((x) => !x.everSynced)) {
      this.onTrouble();
      return;
    }
    if (!this.initialDone) {
      this.initialDone = true;
      const objects = emptyObjects();
      for (const x of this.watchers) {
        if (x.state !== 'synced') continue;
        for (const o of x.informer.list()) {
          const c = this.convertOne(x, o);
          if (c) (objects[c.kind] as unknown[]).push(c.value);
        }
      }
      this.deps.catalog.replace(objects, 'kubernetes', `synced with ${this.server}`);
      this.log.info('initial sync complete', { services: objects.services.length, endpoints: objects.endpointSlices.length + objects.endpoints.length, nodes: objects.nodes.length });
      return;
    }
    // A kind that became absent after the initial sync: drop what we had of it.
    if (w.state === 'absent' && first) this.dropKind(w.spec.kind);
    this.onTrouble();
  }

  private dropKind(kind: Kind): void {
    const current = this.deps.catalog.objects()[kind] as { namespace?: string; name: string }[];
    for (const o of current) this.deps.catalog.remove(kind, keyOf(o));
  }

  private hintLogged = false;

  /** Recompute the human-readable detail shown by /readyz and `edgemesh status`. */
  onTrouble(): void {
    const failing = this.watchers.filter((w) => w.state === 'failing' || w.state === 'listing');
    const origin = this.deps.catalog.state().origin;
    if (failing.length === 0) {
      this.deps.catalog.setDetail(`synced with ${this.server}`);
      return;
    }
    const err = failing.find((w) => w.lastError)?.lastError;
    const serving = !this.initialDone ? (origin === 'snapshot' ? 'serving the snapshot' : 'no catalog yet') : 'keeping the last known state';
    const hint = this.deps.hint;
    if (err && !this.initialDone && hint) {
      // Never reached: say what was tried and the ways out (logged once, shown in status until it works).
      const detail = `cannot reach the Kubernetes API through ${hint.via}: ${shortError(err)}; ${serving}. Next: ${hint.next}`;
      if (!this.hintLogged) {
        this.hintLogged = true;
        this.deps.logger.warn(detail);
      }
      this.deps.catalog.setDetail(detail);
      return;
    }
    this.deps.catalog.setDetail(`API ${err ? `unreachable (${shortError(err)})` : 'listing'} for ${failing.map((w) => w.spec.label).join(', ')}; ${serving}`);
  }

  private convertOne(w: KindWatcher, o: KubernetesObject): Converted | null {
    try {
      // Typed client objects carry Dates and class instances; a JSON round trip gives the plain API shape.
      return w.spec.convert(JSON.parse(JSON.stringify(o)) as Record<string, unknown>);
    } catch (err) {
      this.log.warn(`${w.spec.label}: skipping an object the catalog cannot use`, { error: describeError(err) });
      return null;
    }
  }
}

