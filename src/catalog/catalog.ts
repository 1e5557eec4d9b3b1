/**
 * catalog/ — the one owner of service state. Sources (file, Kubernetes, the snapshot on disk) feed it; consumers
 * read a consistent, immutable snapshot and subscribe to coalesced change events naming the keys that changed.
 *
 *   const catalog = new Catalog({ logger })
 *   catalog.subscribe((snap, change) => { if (change.keys.services.size) rebuildZone(snap) })
 *   catalog.replace(objects, 'file')      // full state from a source
 *   catalog.upsert(converted)             // one object from a watch
 *
 * Endpoints are resolved per service: EndpointSlices when the service has any, else its v1 Endpoints.
 * Changes made in one turn of the event loop are delivered as one event (a 10,000-object list is one event).
 */
import type { Logger } from '../obs/logger.ts';
import type { Converted } from './convert.ts';
import {
  type CatalogObjects, type EndpointSliceInfo, type IstioObject, KINDS, type Kind, type NodeInfo, type SecretInfo,
  type Service, type ServiceEndpoints, emptyObjects, keyOf,
} from './model.ts';

export type ResolvedKind = 'services' | 'endpoints' | 'nodes' | 'secrets' | 'destinationRules' | 'gateways' | 'virtualServices';
export const RESOLVED_KINDS: readonly ResolvedKind[] = ['services', 'endpoints', 'nodes', 'secrets', 'destinationRules', 'gateways', 'virtualServices'];

export interface CatalogSnapshot {
  readonly version: number;
  readonly services: ReadonlyMap<string, Service>;
  /** Resolved endpoints per service key `ns/name`. */
  readonly endpoints: ReadonlyMap<string, ServiceEndpoints>;
  readonly nodes: ReadonlyMap<string, NodeInfo>;
  readonly secrets: ReadonlyMap<string, SecretInfo>;
  readonly destinationRules: ReadonlyMap<string, IstioObject>;
  readonly gateways: ReadonlyMap<string, IstioObject>;
  readonly virtualServices: ReadonlyMap<string, IstioObject>;
}

export interface CatalogChange {
  version: number;
  /** Keys added, updated or removed, per kind. */
  keys: Record<ResolvedKind, ReadonlySet<string>>;
  /** When the last source event that this change carries happened (for apply-latency metrics). */
  firstEventAt: number;
}

export type CatalogOrigin = 'none' | 'file' | 'kubernetes' | 'snapshot';

export interface CatalogState {
  ready: boolean;
  origin: CatalogOrigin;
  /** Human-readable state of the live source, e.g. "synced", "API unreachable: ECONNREFUSED; serving the snapshot". */
  detail: string;
  version: number;
  updatedAt: string | null;
  counts: Record<ResolvedKind, number>;
}

export type Subscriber = (snap: CatalogSnapshot, change: CatalogChange) => void;

export interface CatalogDeps {
  logger: Logger;
  now?: () => number;
}

type RawMaps = { [K in Kind]: Map<string, CatalogObjects[K][number]> };

function emptyRaw(): RawMaps {
  const raw = {} as Record<Kind, Map<string, unknown>>;
  for (const k of KINDS) raw[k] = new Map();
  return raw as RawMaps;
}

function emptyKeys(): Record<ResolvedKind, Set<string>> {
  const o = {} as Record<ResolvedKind, Set<string>>;
  for (const k of RESOLVED_KINDS) o[k] = new Set();
  return o;
}

const same = (a: unknown, b: unknown) => a === b || (a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b));

export class Catalog {
  private readonly log: Logger;
  private readonly now: () => number;
  private raw: RawMaps = emptyRaw();
  /** service key → slice name → slice. */
  private slicesByService = new Map<string, Map<string, EndpointSliceInfo>>();
  private snap: CatalogSnapshot;
  private pending = emptyKeys();
  private pendingSince = 0;
  private flushScheduled = false;
  private subscribers = new Set<Subscriber>();
  private origin: CatalogOrigin = 'none';
  private detail = 'waiting for the first sync';
  private updatedAt: string | null = null;

  constructor(deps: CatalogDeps) {
    this.log = deps.logger;
    this.now = deps.now ?? (() => performance.now());
    this.snap = { version: 0, services: new Map(), endpoints: new Map(), nodes: new Map(), secrets: new Map(), destinationRules: new Map(), gateways: new Map(), virtualServices: new Map() };
  }

  snapshot(): CatalogSnapshot {
    return this.snap;
  }

  /** The raw per-API state, for persistence. */
  objects(): CatalogObjects {
    const o = emptyObjects();
    for (const k of KINDS) (o[k] as unknown[]) = [...this.raw[k].values()];
    return o;
  }

  state(): CatalogState {
    const counts = {} as Record<ResolvedKind, number>;
    for (const k of RESOLVED_KINDS) counts[k] = this.snap[k].size;
    return { ready: this.origin !== 'none', origin: this.origin, detail: this.detail, version: this.snap.version, updatedAt: this.updatedAt, counts };
  }

  /** Sources report how they are doing; shown by /readyz and `edgemesh status`. */
  setDetail(detail: string): void {
    this.detail = detail;
  }

  subscribe(fn: Subscriber): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Replace everything with a source's full state. Only real differences produce change keys. */
  replace(objects: CatalogObjects, origin: Exclude<CatalogOrigin, 'none'>, detail?: string): void {
    for (const kind of KINDS) {
      const next = new Map<string, unknown>();
      for (const item of objects[kind] as { namespace?: string; name: string }[]) next.set(keyOf(item), item);
      const cur = this.raw[kind] as Map<string, unknown>;
      for (const [key, old] of cur) if (!next.has(key)) this.removeRaw(kind, key, old);
      for (const [key, item] of next) if (!same(cur.get(key), item)) this.setRaw(kind, key, item);
    }
    this.origin = origin;
    if (detail !== undefined) this.detail = detail;
    this.schedule();
  }

  upsert(c: Converted): void {
    const key = keyOf(c.value as { namespace?: string; name: string });
    if (same(this.raw[c.kind].get(key), c.value)) return;
    this.setRaw(c.kind, key, c.value);
    this.schedule();
  }

  remove(kind: Kind, key: string): void {
    const old = this.raw[kind].get(key);
    if (old === undefined) return;
    this.removeRaw(kind, key, old);
    this.schedule();
  }

  /** Deliver pending changes now (tests and shutdown); normally they go out on the next macrotask. */
  flush(): void {
    this.flushScheduled = false;
    const keys = this.pending;
    let any = false;
    for (const k of RESOLVED_KINDS) if (keys[k].size) any = true;
    if (!any) return;
    this.pending = emptyKeys();
    const prev = this.snap;
    const next: Record<string, unknown> = { version: prev.version + 1 };
    for (const k of RESOLVED_KINDS) {
      if (!keys[k].size) {
        next[k] = prev[k];
        continue;
      }
      const m = new Map(prev[k] as Map<string, unknown>);
      for (const key of keys[k]) {
        const v = k === 'endpoints' ? this.resolveEndpoints(key) : (this.raw[k] as Map<string, unknown>).get(key);
        if (v === undefined) m.delete(key);
        else m.set(key, v);
      }
      next[k] = m;
    }
    this.snap = next as unknown as CatalogSnapshot;
    this.updatedAt = new Date().toISOString();
    const change: CatalogChange = { version: this.snap.version, keys, firstEventAt: this.pendingSince };
    for (const fn of this.subscribers) {
      try {
        fn(this.snap, change);
      } catch (err) {
        // One broken consumer must not starve the others of updates.
        this.log.error('catalog subscriber failed', { error: err instanceof Error ? err.message : String(err) });
      }
    }
  }

  private schedule(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    this.pendingSince = this.now();
    setImmediate(() => this.flush());
  }

  private mark(kind: ResolvedKind, key: string): void {
    this.pending[kind].add(key);
  }

  private setRaw(kind: Kind, key: string, item: unknown): void {
    if (kind === 'endpointSlices') {
      const old = this.raw.endpointSlices.get(key);
      if (old) this.unindexSlice(old);
      const s = item as EndpointSliceInfo;
      const svcKey = `${s.namespace}/${s.service}`;
      let m = this.slicesByService.get(svcKey);
      if (!m) this.slicesByService.set(svcKey, (m = new Map()));
      m.set(s.name, s);
      this.mark('endpoints', svcKey);
    } else if (kind === 'endpoints') {
      this.mark('endpoints', key);
    } else {
      this.mark(kind, key);
    }
    (this.raw[kind] as Map<string, unknown>).set(key, item);
  }

  private removeRaw(kind: Kind, key: string, old: unknown): void {
    (this.raw[kind] as Map<string, unknown>).delete(key);
    if (kind === 'endpointSlices') this.unindexSlice(old as EndpointSliceInfo);
    else this.mark(kind === 'endpoints' ? 'endpoints' : kind, key);
  }

  private unindexSlice(s: EndpointSliceInfo): void {
    const svcKey = `${s.namespace}/${s.service}`;
    const m = this.slicesByService.get(svcKey);
    m?.delete(s.name);
    if (m && m.size === 0) this.slicesByService.delete(svcKey);
    this.mark('endpoints', svcKey);
  }

  private resolveEndpoints(svcKey: string): ServiceEndpoints | undefined {
    const slices = this.slicesByService.get(svcKey);
    if (slices && slices.size) {
      const [namespace, name] = svcKey.split('/') as [string, string];
      // Slices are sorted by name so the merged order is stable across restarts.
      const sorted = [...slices.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { namespace, name, endpoints: sorted.flatMap((s) => s.endpoints), from: 'EndpointSlice' };
    }
    return this.raw.endpoints.get(svcKey);
  }
}
