/**
 * The internal service catalog model. Every consumer (DNS, proxy, load balancer, gateway, tunnel) reads these
 * types, never Kubernetes objects: sources convert once, at the edge of the system (convert.ts).
 *
 * Keys are `namespace/name` for namespaced objects and `name` for nodes.
 */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };
export type JsonObject = { [k: string]: JsonValue };

export type Protocol = 'TCP' | 'UDP' | 'SCTP';

export interface ServicePort {
  name: string;
  protocol: Protocol;
  port: number;
  /** Number, or a named container port resolved through the endpoints. */
  targetPort: number | string;
  nodePort: number;
  appProtocol?: string;
}

export interface Service {
  namespace: string;
  name: string;
  type: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
  /** Empty for headless and ExternalName services. IPv4 and/or IPv6. */
  clusterIPs: string[];
  headless: boolean;
  externalName?: string;
  externalIPs: string[];
  loadBalancerIPs: string[];
  ports: ServicePort[];
  sessionAffinity: 'None' | 'ClientIP';
  /** Seconds; Kubernetes default 10800. */
  sessionAffinityTimeout: number;
  labels: Record<string, string>;
  /**
   * Whether EdgeProxy serves this service, as the original decides: the service-proxy-name label filter
   * (docs/catalog.md), not headless, has a cluster IP, not ExternalName. DNS answers for every service regardless.
   */
  proxied: boolean;
}

export interface EndpointPort {
  name: string;
  port: number;
  protocol: Protocol;
}

export interface Endpoint {
  ip: string;
  /** Node the endpoint runs on; "" when unknown (dialed directly, like the original's EMPTY_NODE_NAME). */
  nodeName: string;
  /** Pod name from targetRef; "" when absent. */
  podName: string;
  hostname: string;
  ready: boolean;
  ports: EndpointPort[];
}

/** All endpoints of one service, merged from its EndpointSlices or taken from its v1 Endpoints. */
export interface ServiceEndpoints {
  namespace: string;
  name: string;
  endpoints: Endpoint[];
  /** Which API produced them. */
  from: 'EndpointSlice' | 'Endpoints';
}

export interface NodeAddress {
  type: string;
  address: string;
}

export interface NodeInfo {
  name: string;
  addresses: NodeAddress[];
  podCIDRs: string[];
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface SecretInfo {
  namespace: string;
  name: string;
  type: string;
  /** Base64 values as the API returns them (decoded by the consumer that needs them). */
  data: Record<string, string>;
}

/** istio DestinationRule / Gateway / VirtualService: kept as their spec; lb/ and gateway/ interpret them. */
export interface IstioObject {
  namespace: string;
  name: string;
  apiVersion: string;
  spec: JsonObject;
}

/** The raw, per-API state a source produces. The catalog resolves endpoints from it. */
export interface CatalogObjects {
  services: Service[];
  /** From v1 Endpoints objects, keyed like services. */
  endpoints: ServiceEndpoints[];
  /** From EndpointSlices: one entry per slice, `service` names the owning service. */
  endpointSlices: EndpointSliceInfo[];
  nodes: NodeInfo[];
  secrets: SecretInfo[];
  destinationRules: IstioObject[];
  gateways: IstioObject[];
  virtualServices: IstioObject[];
}

export interface EndpointSliceInfo {
  namespace: string;
  /** Slice name. */
  name: string;
  /** Owning service (label kubernetes.io/service-name). */
  service: string;
  endpoints: Endpoint[];
}

export type Kind = keyof CatalogObjects;
export const KINDS: readonly Kind[] = ['services', 'endpoints', 'endpointSlices', 'nodes', 'secrets', 'destinationRules', 'gateways', 'virtualServices'];

export function emptyObjects(): CatalogObjects {
  return { services: [], endpoints: [], endpointSlices: [], nodes: [], secrets: [], destinationRules: [], gateways: [], virtualServices: [] };
}

export function keyOf(o: { namespace?: string; name: string }): string {
  return o.namespace !== undefined ? `${o.namespace}/${o.name}` : o.name;
}
