/**
 * Kubernetes objects (as JSON, or as @kubernetes/client-node's typed objects, which share the JSON field names)
 * → the internal model. Errors name the object and the field: `Service default/web: spec.ports[0].port: "x" is
 * not a port (1-65535)`. Kinds the catalog does not use are ignored, so `kubectl get all -o yaml` output works.
 */
import { isIP } from 'node:net';
import type {
  Endpoint, EndpointPort, EndpointSliceInfo, IstioObject, JsonObject, NodeInfo, Protocol, SecretInfo, Service,
  ServiceEndpoints, ServicePort,
} from './model.ts';

export const SERVICE_PROXY_NAME_LABEL = 'service.edgemesh.kubeedge.io/service-proxy-name';
export const HEADLESS_LABEL = 'service.kubernetes.io/headless';
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

export type ServiceFilterMode = 'FilterIfLabelExists' | 'FilterIfLabelDoesNotExists';

export interface ConvertOptions {
  serviceFilterMode: ServiceFilterMode;
}

export class ConvertError extends Error {
  constructor(readonly object: string, readonly field: string, readonly reason: string) {
    super(`${object}: ${field ? `${field}: ` : ''}${reason}`);
    this.name = 'ConvertError';
  }
}

export type Converted =
  | { kind: 'services'; value: Service }
  | { kind: 'endpoints'; value: ServiceEndpoints }
  | { kind: 'endpointSlices'; value: EndpointSliceInfo }
  | { kind: 'nodes'; value: NodeInfo }
  | { kind: 'secrets'; value: SecretInfo }
  | { kind: 'destinationRules' | 'gateways' | 'virtualServices'; value: IstioObject };

type Rec = Record<string, unknown>;
const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v));

/** A reader over one object that turns every bad field into a ConvertError naming it. */
class Reader {
  constructor(readonly what: string) {}
  fail(field: string, reason: string): never {
    throw new ConvertError(this.what, field, reason);
  }
  rec(v: unknown, field: string): Rec {
    if (v === undefined || v === null) return {};
    return isRec(v) ? v : this.fail(field, `${show(v)} is not an object`);
  }
  arr(v: unknown, field: string): unknown[] {
    if (v === undefined || v === null) return [];
    return Array.isArray(v) ? v : this.fail(field, `${show(v)} is not a list`);
  }
  str(v: unknown, field: string, def = ''): string {
    if (v === undefined || v === null) return def;
    return typeof v === 'string' ? v : this.fail(field, `${show(v)} is not a string`);
  }
  port(v: unknown, field: string, allowZero = false): number {
    const ok = typeof v === 'number' && Number.isInteger(v) && v >= (allowZero ? 0 : 1) && v <= 65535;
    return ok ? v : this.fail(field, `${show(v)} is not a port (${allowZero ? 0 : 1}-65535)`);
  }
  ip(v: unknown, field: string): string {
    const s = this.str(v, field);
    return isIP(s) ? s : this.fail(field, `${show(v)} is not an IP address`);
  }
  protocol(v: unknown, field: string): Protocol {
    const s = this.str(v, field, 'TCP');
    return s === 'TCP' || s === 'UDP' || s === 'SCTP' ? s : this.fail(field, `${show(v)} is not TCP, UDP or SCTP`);
  }
  labels(v: unknown, field: string): Record<string, string> {
    const r = this.rec(v, field);
    const out: Record<string, string> = {};
    for (const [k, x] of Object.entries(r)) out[k] = this.str(x, `${field}.${k}`);
    return out;
  }
}

function meta(o: Rec, kind: string, namespaced: boolean): { r: Reader; name: string; namespace: string; m: Rec } {
  const m = isRec(o.metadata) ? o.metadata : {};
  const name = typeof m.name === 'string' ? m.name : '';
  const namespace = namespaced ? (typeof m.namespace === 'string' && m.namespace ? m.namespace : 'default') : '';
  const r = new Reader(`${kind} ${namespaced ? `${namespace}/` : ''}${name || '(unnamed)'}`);
  if (!name) r.fail('metadata.name', 'is missing');
  return { r, name, namespace, m };
}

export function convertService(o: Rec, opts: ConvertOptions): Service {
  const { r, name, namespace, m } = meta(o, 'Service', true);
  const spec = r.rec(o.spec, 'spec');
  const status = r.rec(o.status, 'status');
  const labels = r.labels(m.labels, 'metadata.labels');
  const typeRaw = r.str(spec.type, 'spec.type', 'ClusterIP');
  if (!['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'].includes(typeRaw)) r.fail('spec.type', `${show(typeRaw)} is not ClusterIP, NodePort, LoadBalancer or ExternalName`);
  const type = typeRaw as Service['type'];
  const rawIPs = spec.clusterIPs !== undefined ? r.arr(spec.clusterIPs, 'spec.clusterIPs').map((v, i) => r.str(v, `spec.clusterIPs[${i}]`)) : [r.str(spec.clusterIP, 'spec.clusterIP')].filter((s) => s !== '');
  const headless = rawIPs.includes('None');
  const clusterIPs = headless ? [] : rawIPs.map((ip, i) => (isIP(ip) ? ip : r.fail(spec.clusterIPs !== undefined ? `spec.clusterIPs[${i}]` : 'spec.clusterIP', `${show(ip)} is not an IP address or "None"`)));
  const ports: ServicePort[] = r.arr(spec.ports, 'spec.ports').map((p, i) => {
    const f = `spec.ports[${i}]`;
    const pr = r.rec(p, f);
    const portNum = r.port(pr.port, `${f}.port`);
    let targetPort: number | string = portNum;
    if (pr.targetPort !== undefined && pr.targetPort !== null) {
      if (typeof pr.targetPort === 'number') targetPort = r.port(pr.targetPort, `${f}.targetPort`);
      else targetPort = r.str(pr.targetPort, `${f}.targetPort`);
      // A numeric string is how IntOrString arrives from some clients.
      if (typeof targetPort === 'string' && /^\d+$/.test(targetPort)) targetPort = r.port(Number(targetPort), `${f}.targetPort`);
    }
    const sp: ServicePort = {
      name: r.str(pr.name, `${f}.name`),
      protocol: r.protocol(pr.protocol, `${f}.protocol`),
      port: portNum,
      targetPort,
      nodePort: pr.nodePort === undefined || pr.nodePort === null ? 0 : r.port(pr.nodePort, `${f}.nodePort`, true),
    };
    if (typeof pr.appProtocol === 'string') sp.appProtocol = pr.appProtocol;
    return sp;
  });
  const affinity = r.str(spec.sessionAffinity, 'spec.sessionAffinity', 'None');
  if (affinity !== 'None' && affinity !== 'ClientIP') r.fail('spec.sessionAffinity', `${show(affinity)} is not None or ClientIP`);
  const sac = r.rec(r.rec(r.rec(spec.sessionAffinityConfig, 'spec.sessionAffinityConfig').clientIP, 'spec.sessionAffinityConfig.clientIP'), '');
  const timeout = sac.timeoutSeconds === undefined || sac.timeoutSeconds === null ? 10800 : sac.timeoutSeconds;
  if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 1 || timeout > 86400) {
    r.fail('spec.sessionAffinityConfig.clientIP.timeoutSeconds', `${show(timeout)} is not an integer (1-86400)`);
  }
  const lbIngress = r.arr(r.rec(status.loadBalancer, 'status.loadBalancer').ingress, 'status.loadBalancer.ingress');
  const loadBalancerIPs = lbIngress.flatMap((x, i) => {
    const ing = r.rec(x, `status.loadBalancer.ingress[${i}]`);
    return ing.ip ? [r.ip(ing.ip, `status.loadBalancer.ingress[${i}].ip`)] : [];
  });
  const externalIPs = r.arr(spec.externalIPs, 'spec.externalIPs').map((v, i) => r.ip(v, `spec.externalIPs[${i}]`));
  const svc: Service = {
    namespace, name, type, clusterIPs, headless, externalIPs, loadBalancerIPs, ports,
    sessionAffinity: affinity as Service['sessionAffinity'],
    sessionAffinityTimeout: timeout as number,
    labels,
    proxied: false,
  };
  if (type === 'ExternalName') svc.externalName = r.str(spec.externalName, 'spec.externalName');
  svc.proxied = isProxied(svc, opts.serviceFilterMode);
  return svc;
}

/** The original's proxy filter: the service-proxy-name label (serviceFilterMode), the headless label, no cluster IP, ExternalName. */
export function isProxied(svc: Service, mode: ServiceFilterMode): boolean {
  const has = Object.hasOwn(svc.labels, SERVICE_PROXY_NAME_LABEL);
  if (mode === 'FilterIfLabelExists' ? has : !has) return false;
  if (Object.hasOwn(svc.labels, HEADLESS_LABEL)) return false;
  return svc.type !== 'ExternalName' && !svc.headless && svc.clusterIPs.length > 0;
}

function endpointPorts(r: Reader, v: unknown, field: string): EndpointPort[] {
  const out: EndpointPort[] = [];
  r.arr(v, field).forEach((p, i) => {
    const pr = r.rec(p, `${field}[${i}]`);
    // EndpointSlice ports may have a null port ("all ports"); the proxy cannot use those, so skip them.
    if (pr.port === undefined || pr.port === null) return;
    out.push({ name: r.str(pr.name, `${field}[${i}].name`), port: r.port(pr.port, `${field}[${i}].port`), protocol: r.protocol(pr.protocol, `${field}[${i}].protocol`) });
  });
  return out;
}

export function convertEndpoints(o: Rec): ServiceEndpoints {
  const { r, name, namespace } = meta(o, 'Endpoints', true);
  const endpoints: Endpoint[] = [];
  r.arr(o.subsets, 'subsets').forEach((s, si) => {
    const f = `subsets[${si}]`;
    const sub = r.rec(s, f);
    const ports = endpointPorts(r, sub.ports, `${f}.ports`);
    for (const [list, ready] of [['addresses', true], ['notReadyAddresses', false]] as const) {
      r.arr(sub[list], `${f}.${list}`).forEach((a, ai) => {
        const af = `${f}.${list}[${ai}]`;
        const ad = r.rec(a, af);
        endpoints.push({
          ip: r.ip(ad.ip, `${af}.ip`),
          nodeName: r.str(ad.nodeName, `${af}.nodeName`),
          podName: r.str(r.rec(ad.targetRef, `${af}.targetRef`).name, `${af}.targetRef.name`),
          hostname: r.str(ad.hostname, `${af}.hostname`),
          ready,
          ports,
        });
      });
    }
  });
  return { namespace, name, endpoints, from: 'Endpoints' };
}

export function convertEndpointSlice(o: Rec): EndpointSliceInfo {
  const { r, name, namespace, m } = meta(o, 'EndpointSlice', true);
  const labels = r.labels(m.labels, 'metadata.labels');
  const service = labels[SERVICE_NAME_LABEL] ?? '';
  if (!service) r.fail(`metadata.labels["${SERVICE_NAME_LABEL}"]`, 'is missing (the slice names no service)');
  const family = r.str(o.addressType, 'addressType', 'IPv4');
  const ports = endpointPorts(r, o.ports, 'ports');
  const endpoints: Endpoint[] = [];
  if (family !== 'IPv4' && family !== 'IPv6') return { namespace, name, service, endpoints }; // FQDN slices: nothing to dial
  r.arr(o.endpoints, 'endpoints').forEach((e, i) => {
    const f = `endpoints[${i}]`;
    const ep = r.rec(e, f);
    const cond = r.rec(ep.conditions, `${f}.conditions`);
    // Kubernetes: a nil "ready" condition means ready.
    const ready = cond.ready === undefined || cond.ready === null ? true : cond.ready === true;
    const addrs = r.arr(ep.addresses, `${f}.addresses`);
    if (addrs.length === 0) r.fail(`${f}.addresses`, 'is empty');
    // All addresses of one endpoint are fungible (Kubernetes uses the first); keep the first.
    endpoints.push({
      ip: r.ip(addrs[0], `${f}.addresses[0]`),
      nodeName: r.str(ep.nodeName, `${f}.nodeName`),
      podName: r.str(r.rec(ep.targetRef, `${f}.targetRef`).name, `${f}.targetRef.name`),
      hostname: r.str(ep.hostname, `${f}.hostname`),
      ready,
      ports,
    });
  });
  return { namespace, name, service, endpoints };
}

export function convertNode(o: Rec): NodeInfo {
  const { r, name, m } = meta(o, 'Node', false);
  const spec = r.rec(o.spec, 'spec');
  const status = r.rec(o.status, 'status');
  const podCIDRs = spec.podCIDRs !== undefined ? r.arr(spec.podCIDRs, 'spec.podCIDRs').map((v, i) => r.str(v, `spec.podCIDRs[${i}]`)) : spec.podCIDR ? [r.str(spec.podCIDR, 'spec.podCIDR')] : [];
  return {
    name,
    addresses: r.arr(status.addresses, 'status.addresses').map((a, i) => {
      const ad = r.rec(a, `status.addresses[${i}]`);
      return { type: r.str(ad.type, `status.addresses[${i}].type`), address: r.str(ad.address, `status.addresses[${i}].address`) };
    }),
    podCIDRs,
    labels: r.labels(m.labels, 'metadata.labels'),
    annotations: r.labels(m.annotations, 'metadata.annotations'),
  };
}

export function convertSecret(o: Rec): SecretInfo {
  const { r, name, namespace } = meta(o, 'Secret', true);
  const data: Record<string, string> = {};
  const raw = r.rec(o.data, 'data');
  for (const [k, v] of Object.entries(raw)) {
    const s = r.str(v, `data.${k}`);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s.replace(/\s+/g, ''))) r.fail(`data.${k}`, 'is not base64');
    data[k] = s.replace(/\s+/g, '');
  }
  // stringData is write-only in the API, but hand-written catalog files use it.
  for (const [k, v] of Object.entries(r.rec(o.stringData, 'stringData'))) data[k] = Buffer.from(r.str(v, `stringData.${k}`)).toString('base64');
  return { namespace, name, type: r.str(o.type, 'type', 'Opaque'), data };
}

export function convertIstio(o: Rec, kind: string): IstioObject {
  const { r, name, namespace } = meta(o, kind, true);
  const spec = r.rec(o.spec, 'spec');
  return { namespace, name, apiVersion: String(o.apiVersion), spec: JSON.parse(JSON.stringify(spec)) as JsonObject };
}

const ISTIO_KINDS: Record<string, 'destinationRules' | 'gateways' | 'virtualServices'> = {
  DestinationRule: 'destinationRules',
  Gateway: 'gateways',
  VirtualService: 'virtualServices',
};

/**
 * Convert one object. Returns null for kinds the catalog does not use (the reason is in `ignored`), throws
 * ConvertError for a used kind with a bad field.
 */
export function convertObject(o: unknown, opts: ConvertOptions): Converted | { ignored: string } {
  if (!isRec(o)) throw new ConvertError('object', '', `${show(o)} is not a Kubernetes object`);
  const apiVersion = typeof o.apiVersion === 'string' ? o.apiVersion : '';
  const kind = typeof o.kind === 'string' ? o.kind : '';
  if (!kind) throw new ConvertError('object', 'kind', 'is missing');
  const group = apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  if (group === '' && apiVersion === 'v1') {
    switch (kind) {
      case 'Service': return { kind: 'services', value: convertService(o, opts) };
      case 'Endpoints': return { kind: 'endpoints', value: convertEndpoints(o) };
      case 'Node': return { kind: 'nodes', value: convertNode(o) };
      case 'Secret': return { kind: 'secrets', value: convertSecret(o) };
    }
  }
  if (group === 'discovery.k8s.io' && kind === 'EndpointSlice') return { kind: 'endpointSlices', value: convertEndpointSlice(o) };
  if (group === 'networking.istio.io' && ISTIO_KINDS[kind]) return { kind: ISTIO_KINDS[kind], value: convertIstio(o, kind) } as Converted;
  return { ignored: `${apiVersion || '(no apiVersion)'} ${kind}` };
}

