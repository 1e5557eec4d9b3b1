/**
 * lb/ — the ready endpoints of one service port, as Kubernetes matches them (by port name; a lone unnamed port
 * takes the only endpoint port). The proxy and the gateway balance over exactly this list.
 */
import type { CatalogSnapshot } from '../catalog/catalog.ts';
import type { Service, ServicePort } from '../catalog/model.ts';
import type { LbEndpoint } from './balancer.ts';

export function readyEndpoints(snap: CatalogSnapshot, svc: Service, sp: ServicePort): LbEndpoint[] {
  const se = snap.endpoints.get(`${svc.namespace}/${svc.name}`);
  const out: LbEndpoint[] = [];
  for (const ep of se?.endpoints ?? []) {
    if (!ep.ready) continue;
    const p = ep.ports.find((x) => x.name === sp.name && x.protocol === sp.protocol) ?? (ep.ports.length === 1 && !sp.name ? ep.ports[0] : undefined);
    if (!p) continue;
    out.push({ key: `${ep.ip}:${p.port}`, ip: ep.ip, port: p.port, nodeName: ep.nodeName, podName: ep.podName });
  }
  return out;
}
