import { describe, expect, test } from 'bun:test';
import { Catalog, type CatalogChange } from '../src/catalog/catalog.ts';
import { ConvertError, convertObject } from '../src/catalog/convert.ts';
import { parseCatalogText } from '../src/catalog/sources/file.ts';
import { emptyObjects } from '../src/catalog/model.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';

const opts = { serviceFilterMode: 'FilterIfLabelExists' as const };

const svc = (name: string, extra: Record<string, unknown> = {}) => ({
  apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default', ...(extra.metadata as object) },
  spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 8080 }], ...(extra.spec as object) },
});

describe('convert', () => {
  test('Service fields and the EdgeProxy filter (the original\'s label filter)', () => {
    const r = convertObject(svc('web', { spec: { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } } }), opts);
    if ('ignored' in r || r.kind !== 'services') throw new Error('expected a service');
    expect(r.value).toMatchObject({ namespace: 'default', name: 'web', clusterIPs: ['10.96.0.10'], proxied: true, sessionAffinity: 'ClientIP', sessionAffinityTimeout: 60 });
    expect(r.value.ports[0]).toEqual({ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 0 });

    const labelled = svc('x', { metadata: { labels: { 'service.edgemesh.kubeedge.io/service-proxy-name': '' } } });
    const a = convertObject(labelled, opts) as { value: { proxied: boolean } };
    expect(a.value.proxied).toBe(false);
    const b = convertObject(labelled, { serviceFilterMode: 'FilterIfLabelDoesNotExists' }) as { value: { proxied: boolean } };
    expect(b.value.proxied).toBe(true);
    const headless = convertObject(svc('h', { spec: { clusterIP: 'None' } }), opts) as { value: { proxied: boolean; headless: boolean; clusterIPs: string[] } };
    expect(headless.value).toMatchObject({ proxied: false, headless: true, clusterIPs: [] });
    const ext = convertObject(svc('e', { spec: { type: 'ExternalName', externalName: 'example.org', clusterIP: undefined } }), opts) as { value: { proxied: boolean; externalName: string } };
    expect(ext.value).toMatchObject({ proxied: false, externalName: 'example.org' });
  });

  test('bad fields name the object and the field', () => {
    expect(() => convertObject(svc('web', { spec: { ports: [{ port: 'eighty' }] } }), opts)).toThrow('Service default/web: spec.ports[0].port: "eighty" is not a port (1-65535)');
    expect(() => convertObject(svc('web', { spec: { clusterIP: '10.96.0.300' } }), opts)).toThrow(ConvertError);
    expect(() => convertObject({ apiVersion: 'v1', kind: 'Service', metadata: {} }, opts)).toThrow('metadata.name: is missing');
    expect(convertObject({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd' } }, opts)).toEqual({ ignored: 'apps/v1 Deployment' });
  });

  test('Endpoints and EndpointSlices carry node names, hostnames and readiness', () => {
    const ep = convertObject({
      apiVersion: 'v1', kind: 'Endpoints', metadata: { name: 'web', namespace: 'default' },
      subsets: [{ addresses: [{ ip: '10.244.1.5', nodeName: 'edge-1', hostname: 'web-0', targetRef: { kind: 'Pod', name: 'web-0' } }], notReadyAddresses: [{ ip: '10.244.1.6' }], ports: [{ name: 'http', port: 8080 }] }],
    }, opts) as { value: { endpoints: unknown[] } };
    expect(ep.value.endpoints).toEqual([
      { ip: '10.244.1.5', nodeName: 'edge-1', podName: 'web-0', hostname: 'web-0', ready: true, ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] },
      { ip: '10.244.1.6', nodeName: '', podName: '', hostname: '', ready: false, ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] },
    ]);
    const slice = convertObject({
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-abc', namespace: 'default', labels: { 'kubernetes.io/service-name': 'web' } },
      addressType: 'IPv4', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      endpoints: [{ addresses: ['10.244.2.7'], nodeName: 'edge-2', conditions: {} }, { addresses: ['10.244.2.8'], conditions: { ready: false } }],
    }, opts) as { value: { service: string; endpoints: { ready: boolean }[] } };
    expect(slice.value.service).toBe('web');
    expect(slice.value.endpoints.map((e) => e.ready)).toEqual([true, false]); // nil ready means ready
  });
});

describe('catalog store', () => {
  test('EndpointSlices are preferred over v1 Endpoints, per service', () => {
    const c = new Catalog({ logger: createMemoryLogger() });
    const o = emptyObjects();
    const ep = (ip: string) => ({ ip, nodeName: '', podName: '', hostname: '', ready: true, ports: [] });
    o.endpoints.push({ namespace: 'default', name: 'a', endpoints: [ep('1.1.1.1')], from: 'Endpoints' }, { namespace: 'default', name: 'b', endpoints: [ep('2.2.2.2')], from: 'Endpoints' });
    o.endpointSlices.push({ namespace: 'default', name: 'a-2', service: 'a', endpoints: [ep('3.3.3.4')] }, { namespace: 'default', name: 'a-1', service: 'a', endpoints: [ep('3.3.3.3')] });
    c.replace(o, 'file');
    c.flush();
    const s = c.snapshot();
    expect(s.endpoints.get('default/a')!.endpoints.map((e) => e.ip)).toEqual(['3.3.3.3', '3.3.3.4']);
    expect(s.endpoints.get('default/a')!.from).toBe('EndpointSlice');
    expect(s.endpoints.get('default/b')!.endpoints.map((e) => e.ip)).toEqual(['2.2.2.2']);
    // Removing the slices falls back to the Endpoints object.
    c.remove('endpointSlices', 'default/a-1');
    c.remove('endpointSlices', 'default/a-2');
    c.flush();
    expect(c.snapshot().endpoints.get('default/a')!.endpoints.map((e) => e.ip)).toEqual(['1.1.1.1']);
  });

  test('changes in one turn are coalesced into one event naming exactly the changed keys', async () => {
    const c = new Catalog({ logger: createMemoryLogger() });
    const changes: CatalogChange[] = [];
    c.subscribe((_s, ch) => changes.push(ch));
    const parsed = parseCatalogText([1, 2, 3].map((i) => `apiVersion: v1\nkind: Service\nmetadata: {name: s${i}}\nspec: {clusterIP: 10.96.0.${i}, ports: [{port: 80}]}\n`).join('---\n'), opts);
    expect(parsed.errors).toEqual([]);
    c.replace(parsed.objects, 'file');
    for (const s of parsed.objects.services) c.upsert({ kind: 'services', value: { ...s } }); // identical: no change
    await Bun.sleep(5);
    expect(changes.length).toBe(1);
    expect([...changes[0]!.keys.services].sort()).toEqual(['default/s1', 'default/s2', 'default/s3']);
    const before = c.snapshot();
    c.upsert({ kind: 'services', value: { ...parsed.objects.services[1]!, labels: { a: 'b' } } });
    await Bun.sleep(5);
    expect(changes.length).toBe(2);
    expect([...changes[1]!.keys.services]).toEqual(['default/s2']);
    expect(changes[1]!.keys.endpoints.size).toBe(0);
    // The earlier snapshot is immutable: readers holding it see a consistent view.
    expect(before.services.get('default/s2')!.labels).toEqual({});
    expect(c.snapshot().services.get('default/s2')!.labels).toEqual({ a: 'b' });
  });

  test('a throwing subscriber does not stop the others', async () => {
    const log = createMemoryLogger();
    const c = new Catalog({ logger: log });
    let seen = 0;
    c.subscribe(() => { throw new Error('boom'); });
    c.subscribe(() => { seen++; });
    c.upsert({ kind: 'nodes', value: { name: 'n1', addresses: [], podCIDRs: [], labels: {}, annotations: {} } });
    await Bun.sleep(5);
    expect(seen).toBe(1);
    expect(log.lines.join('\n')).toContain('catalog subscriber failed');
  });
});

describe('catalog file format', () => {
  test('List, ---, JSON and typed lists; errors carry their line; unused kinds are ignored', () => {
    const text = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d}
---
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: b, namespace: other}
  spec: {clusterIP: 10.96.0.2, ports: [{port: 53, protocol: UDP}]}
`;
    const p = parseCatalogText(text, opts);
    expect(p.errors).toEqual([]);
    expect(p.objects.services.map((s) => `${s.namespace}/${s.name}`)).toEqual(['default/a', 'other/b']);
    expect(p.objects.nodes[0]!.addresses).toEqual([{ type: 'InternalIP', address: '192.0.2.10' }]);
    expect(p.ignored).toEqual([{ line: 8, message: 'apps/v1 Deployment' }]);

    const bad = parseCatalogText(`apiVersion: v1
kind: Service
metadata: {name: ok}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: broken}
spec: {clusterIP: 10.96.0.2, ports: [{port: 99999}]}
---
key: [unclosed
`, opts);
    expect(bad.errors.length).toBe(2);
    expect(bad.errors[0]).toEqual({ line: 6, message: 'Service default/broken: spec.ports[0].port: 99999 is not a port (1-65535)' });
    expect(bad.errors[1]!.line).toBeGreaterThanOrEqual(11); // an unclosed bracket is reported where input ends
  });

  test('duplicates are errors; garbage never throws', () => {
    const dup = parseCatalogText('apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: a}\n', opts);
    expect(dup.errors[0]!.message).toContain('defined twice (first at line 1)');
    for (const junk of ['\u0000\u0001\u0002', '- - - [', 'a: *unknown', '42', '"str"', '[1,2,3]', 'kind: Service', '&a [*a, *a]']) {
      const r = parseCatalogText(junk, opts);
      expect(Array.isArray(r.errors)).toBe(true);
    }
  });
});
