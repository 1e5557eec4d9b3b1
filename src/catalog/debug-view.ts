/** catalog/ — the catalog as operators want to read it (the admin server's /debug/catalog). */
import type { CatalogSnapshot } from './catalog.ts';

/** A JSON-ready view of a snapshot; Secrets without their data. */
export function catalogDebugView(snap: CatalogSnapshot): unknown {
  return {
    version: snap.version,
    services: [...snap.services.values()],
    endpoints: [...snap.endpoints.values()],
    nodes: [...snap.nodes.values()],
    destinationRules: [...snap.destinationRules.values()],
    gateways: [...snap.gateways.values()],
    virtualServices: [...snap.virtualServices.values()],
    // Never serve key material over HTTP, even on loopback.
    secrets: [...snap.secrets.values()].map((s) => ({ namespace: s.namespace, name: s.name, type: s.type, keys: Object.keys(s.data) })),
  };
}

