/**
 * The agent against a Kubernetes API (the fixture speaking the real list/watch wire format): initial list,
 * add/update/delete, dropped watches, 410 relists, outages, and restarts served from the snapshot.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { FakeApiServer } from './fixtures/apiserver.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, freePort, getJson, getText, tempDir, waitFor, writeAgentConfig } from './helpers.ts';

type DebugCatalog = {
  services: { namespace: string; name: string; clusterIPs: string[]; proxied: boolean }[];
  endpoints: { name: string; from: string; endpoints: { ip: string; nodeName: string }[] }[];
  nodes: { name: string }[];
  destinationRules: { name: string; spec: { host?: string } }[];
};

const svc = (name: string, ip: string, labels: Record<string, string> = {}) => ({
  apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default', labels },
  spec: { type: 'ClusterIP', clusterIP: ip, clusterIPs: [ip], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }] },
});
const slice = (service: string, ips: string[]) => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
  metadata: { name: `${service}-x1`, namespace: 'default', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  endpoints: ips.map((ip, i) => ({ addresses: [ip], nodeName: `edge-${i}`, conditions: { ready: true } })),
});
const endpoints = (service: string, ips: string[]) => ({
  apiVersion: 'v1', kind: 'Endpoints', metadata: { name: service, namespace: 'default' },
  subsets: [{ addresses: ips.map((ip) => ({ ip, nodeName: 'edge-9' })), ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] }],
});

const names = (c: DebugCatalog) => c.services.map((s) => s.name).sort();

async function startAgent(api: FakeApiServer, dir: string, extra = '') {
  const cfg = await writeAgentConfig(dir, `kubeAPIConfig:\n  master: ${api.url}\n${extra}`);
  const agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'edge-0']);
  const catalog = () => getJson<DebugCatalog>(`${cfg.admin}/debug/catalog`);
  return { cfg, agent, catalog };
}

describe('agent against the Kubernetes API', () => {
  const api = new FakeApiServer();
  const t = tempDir();
  let a: Awaited<ReturnType<typeof startAgent>>;

  beforeAll(async () => {
    await api.start();
    api.apply(svc('web', '10.96.0.10'));
    api.apply(svc('dns', '10.96.0.53', { 'service.edgemesh.kubeedge.io/service-proxy-name': 'other' }));
    api.apply(slice('web', ['10.244.0.5', '10.244.1.5']));
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0' }, status: { addresses: [{ type: 'InternalIP', address: '192.0.2.1' }] } });
    api.apply({ apiVersion: 'networking.istio.io/v1alpha3', kind: 'DestinationRule', metadata: { name: 'web', namespace: 'default' }, spec: { host: 'web', trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } } });
    a = await startAgent(api, t.path);
    await waitFor(async () => (await getText(`${a.cfg.admin}/readyz`)).status === 200, 'readyz', 15_000);
  });

  afterAll(async () => {
    await a.agent.stop();
    await api.stop();
    t.cleanup();
  });

  test('initial list: services (filtered for the proxy, all for DNS), slices, nodes, DestinationRules', async () => {
    const c = await a.catalog();
    expect(names(c)).toEqual(['dns', 'web']);
    expect(c.services.find((s) => s.name === 'dns')!.proxied).toBe(false);
    expect(c.services.find((s) => s.name === 'web')!.proxied).toBe(true);
    expect(c.endpoints[0]).toMatchObject({ name: 'web', from: 'EndpointSlice' });
    expect(c.endpoints[0]!.endpoints.map((e) => e.ip)).toEqual(['10.244.0.5', '10.244.1.5']);
    expect(c.nodes.map((n) => n.name)).toEqual(['edge-0']);
    expect(c.destinationRules[0]!.spec.host).toBe('web');
    expect((await getText(`${a.cfg.admin}/readyz`)).body).toContain(`synced with ${api.url}`);
    // It asked for exactly the kinds it needs, as list + watch.
    for (const p of ['/api/v1/services', '/apis/discovery.k8s.io/v1/endpointslices', '/api/v1/nodes', '/apis/networking.istio.io/v1alpha3/destinationrules']) {
      expect(api.requests.some((r) => r.startsWith(p) && !r.includes('watch'))).toBe(true);
      expect(api.requests.some((r) => r.startsWith(p) && r.includes('watch=true'))).toBe(true);
    }
    expect(api.requests.some((r) => r.startsWith('/api/v1/secrets'))).toBe(false); // the agent never pulls Secrets
  });

  test('add, update and delete through the watch', async () => {
    api.apply(svc('api', '10.96.0.20'));
    await waitFor(async () => names(await a.catalog()).includes('api'), 'api added', 3000);
    api.apply(svc('api', '10.96.0.21'));
    await waitFor(async () => (await a.catalog()).services.find((s) => s.name === 'api')?.clusterIPs[0] === '10.96.0.21', 'api updated', 3000);
    api.apply(slice('web', ['10.244.0.5']));
    await waitFor(async () => (await a.catalog()).endpoints.find((e) => e.name === 'web')?.endpoints.length === 1, 'slice updated', 3000);
    api.remove('v1', 'Service', 'api');
    await waitFor(async () => !names(await a.catalog()).includes('api'), 'api deleted', 3000);
  });

  test('dropped watch: the agent reconnects and replays what it missed', async () => {
    api.dropWatches();
    api.apply(svc('missed', '10.96.0.30'));
    await waitFor(async () => names(await a.catalog()).includes('missed'), 'missed', 10_000);
    await waitFor(() => api.watchCount() >= 4, 'watches re-established', 10_000);
  });

  test('410 Expired: relist, and objects deleted meanwhile disappear', async () => {
    // Changes the agent cannot replay: history compacted and the watch dropped.
    const sub = api.requests.length;
    api.holdEvents = true;
    api.remove('v1', 'Service', 'missed');
    api.apply(svc('fresh', '10.96.0.40'));
    api.compact();
    api.dropWatches();
    api.holdEvents = false;
    await waitFor(async () => { const n = names(await a.catalog()); return n.includes('fresh') && !n.includes('missed'); }, 'relist converged', 15_000);
    expect(api.expiredServed).toBeGreaterThan(0);
    expect(api.requests.slice(sub).some((r) => r.startsWith('/api/v1/services') && !r.includes('watch'))).toBe(true);
  });

  test('API down 10 s: state kept and ready; API back: converges', async () => {
    const before = names(await a.catalog());
    await api.stop();
    const t0 = performance.now();
    while (performance.now() - t0 < 10_000) {
      expect(names(await a.catalog())).toEqual(before);
      const r = await getText(`${a.cfg.admin}/readyz`);
      expect(r.status).toBe(200);
      await Bun.sleep(500);
    }
    const st = await getJson<{ catalog: { detail: string } }>(`${a.cfg.admin}/status`);
    expect(st.catalog.detail).toMatch(/unreachable|listing/);
    api.remove('v1', 'Service', 'fresh');
    api.apply(svc('after', '10.96.0.50'));
    await api.start();
    await waitFor(async () => { const n = names(await a.catalog()); return n.includes('after') && !n.includes('fresh'); }, 'converged after outage', 30_000, 200);
    await waitFor(async () => (await getJson<{ catalog: { detail: string } }>(`${a.cfg.admin}/status`)).catalog.detail.startsWith('synced'), 'synced detail', 20_000, 200);
  }, 60_000);

  test('agent restarted while the API is down: served from the snapshot, /readyz says so', async () => {
    const before = names(await a.catalog());
    await Bun.sleep(1500); // the snapshot is written about 1 s after the last change
    expect(await a.agent.stop()).toBe(0);
    await api.stop();
    a = { ...a, agent: new AgentProcess(['agent', '--config', a.cfg.path, '--node-name', 'edge-0']) };
    await waitFor(async () => (await getText(`${a.cfg.admin}/readyz`)).status === 200, 'readyz from snapshot', 10_000);
    const r = await getText(`${a.cfg.admin}/readyz`);
    expect(r.body).toContain('serving the catalog snapshot');
    expect(names(await a.catalog())).toEqual(before);
    await a.agent.waitForLog(/catalog restored from the snapshot/);
    // The API comes back with one service less: the first sync removes it.
    api.remove('v1', 'Service', 'after');
    await api.start();
    await waitFor(async () => !names(await a.catalog()).includes('after'), 'sync after restart', 30_000, 200);
    expect((await getText(`${a.cfg.admin}/readyz`)).body).toContain('catalog from kubernetes');
  }, 60_000);
});

describe('agent against an API whose EndpointSlices miss some services', () => {
  test('each service takes its slices when it has any, its v1 Endpoints otherwise; the cluster IP then works', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    const back = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('from endpoints') });
    try {
      // "web" has slices; "old" only v1 Endpoints (no mirroring controller), pointing at a local backend.
      api.apply(svc('web', '10.96.0.10'));
      api.apply(slice('web', ['10.244.0.5']));
      api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'old', namespace: 'default' }, spec: { clusterIP: '10.96.0.11', ports: [{ name: 'http', port: 80, protocol: 'TCP' }] } });
      api.apply({ apiVersion: 'v1', kind: 'Endpoints', metadata: { name: 'old', namespace: 'default' }, subsets: [{ addresses: [{ ip: '127.0.0.1' }], ports: [{ name: 'http', port: back.port, protocol: 'TCP' }] }] });
      const a = await startAgent(api, t.path, 'modules:\n  edgeProxy: { enable: true, listenAddress: 127.0.0.1, interception: none }\n');
      try {
        await waitFor(async () => (await getText(`${a.cfg.admin}/readyz`)).status === 200, 'readyz', 15_000);
        const c = await a.catalog();
        expect(c.endpoints.find((e) => e.name === 'web')).toMatchObject({ from: 'EndpointSlice' });
        expect(c.endpoints.find((e) => e.name === 'old')).toMatchObject({ from: 'Endpoints' });
        const ports = await waitFor(async () => (await getJson<{ service: string; listenPort: number; endpoints: number }[]>(`${a.cfg.admin}/debug/proxy`)).find((p) => p.service.startsWith('default/old') && p.endpoints === 1), 'the proxy port of "old"');
        expect(await (await fetch(`http://127.0.0.1:${ports.listenPort}/`)).text()).toBe('from endpoints');
      } finally {
        await a.agent.stop();
      }
    } finally {
      back.stop(true);
      await api.stop();
      t.cleanup();
    }
  });
});

describe('agent against an API without EndpointSlices or istio', () => {
  test('falls back to v1 Endpoints and treats missing CRDs as empty', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.disable('endpointslices');
    api.disable('destinationrules');
    api.apply(svc('web', '10.96.0.10'));
    api.apply(endpoints('web', ['10.244.3.3']));
    const a = await startAgent(api, t.path);
    try {
      await waitFor(async () => (await getText(`${a.cfg.admin}/readyz`)).status === 200, 'readyz', 15_000);
      const c = await a.catalog();
      expect(c.endpoints[0]).toMatchObject({ name: 'web', from: 'Endpoints' });
      expect(c.endpoints[0]!.endpoints[0]).toMatchObject({ ip: '10.244.3.3', nodeName: 'edge-9' });
      api.apply(endpoints('web', ['10.244.3.3', '10.244.3.4']));
      await waitFor(async () => (await a.catalog()).endpoints[0]?.endpoints.length === 2, 'endpoints update', 5000);
      expect(a.agent.logs).toContain('destinationrules: not available');
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });
});

describe('ways to reach the API, and the gateway role', () => {
  const api = new FakeApiServer();
  const t = tempDir();
  beforeAll(async () => {
    await api.start();
    api.apply(svc('web', '10.96.0.10'));
    api.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'gw-secret', namespace: 'default' }, type: 'kubernetes.io/tls', data: { 'tls.crt': 'Y2VydA==', 'tls.key': 'a2V5' } });
    api.apply({ apiVersion: 'networking.istio.io/v1alpha3', kind: 'Gateway', metadata: { name: 'edgemesh-gateway', namespace: 'default' }, spec: { servers: [{ port: { number: 23333, name: 'http-0', protocol: 'HTTP' }, hosts: ['*'] }] } });
    api.apply({ apiVersion: 'networking.istio.io/v1alpha3', kind: 'VirtualService', metadata: { name: 'vs', namespace: 'default' }, spec: { hosts: ['*'], gateways: ['edgemesh-gateway'], http: [{ route: [{ destination: { host: 'web', port: { number: 80 } } }] }] } });
  });
  afterAll(async () => {
    await api.stop();
    t.cleanup();
  });

  async function readyWith(args: string[], admin: string): Promise<AgentProcess> {
    const agent = new AgentProcess(args);
    try {
      await waitFor(async () => (await getText(`${admin}/readyz`)).body.includes('synced'), 'synced', 15_000);
    } catch (err) {
      await agent.stop();
      throw err;
    }
    return agent;
  }

  test('edge mode: the metaServer URL, no kubeconfig written', async () => {
    const cfg = await writeAgentConfig(t.path, `kubeAPIConfig:\n  metaServer:\n    server: ${api.url}\n`);
    const agent = await readyWith(['agent', '--config', cfg.path, '--node-name', 'edge-0'], cfg.admin);
    try {
      const st = await getJson<{ mode: string }>(`${cfg.admin}/status`);
      expect(st.mode).toBe('edge');
      expect(names(await getJson<DebugCatalog>(`${cfg.admin}/debug/catalog`))).toEqual(['web']);
    } finally {
      await agent.stop();
    }
  });

  test('manual mode: a kubeconfig file', async () => {
    const kc = `${t.path}/kubeconfig`;
    await Bun.write(kc, `apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: "${api.url}" }\nusers:\n- name: u\n  user: { token: abc }\ncontexts:\n- name: x\n  context: { cluster: c, user: u }\ncurrent-context: x\n`);
    const cfg = await writeAgentConfig(t.path, `kubeAPIConfig:\n  kubeConfig: ${kc}\n`);
    const agent = await readyWith(['agent', '--config', cfg.path, '--node-name', 'edge-0'], cfg.admin);
    try {
      expect((await getJson<{ mode: string }>(`${cfg.admin}/status`)).mode).toBe('manual');
    } finally {
      await agent.stop();
    }
  });

  test('gateway: watches Gateways, VirtualServices and Secrets; never serves Secret data', async () => {
    const cfg = await writeAgentConfig(t.path, `kubeAPIConfig:\n  master: ${api.url}\n`, 'gateway');
    const agent = await readyWith(['gateway', '--config', cfg.path, '--node-name', 'edge-0'], cfg.admin);
    try {
      const c = await getJson<DebugCatalog & { gateways: { name: string }[]; virtualServices: { name: string }[]; secrets: Record<string, unknown>[] }>(`${cfg.admin}/debug/catalog`);
      expect(c.gateways.map((g) => g.name)).toEqual(['edgemesh-gateway']);
      expect(c.virtualServices.map((v) => v.name)).toEqual(['vs']);
      expect(c.secrets).toEqual([{ namespace: 'default', name: 'gw-secret', type: 'kubernetes.io/tls', keys: ['tls.crt', 'tls.key'] }]);
      expect(JSON.stringify(c)).not.toContain('Y2VydA==');
      expect((await getJson<{ role: string }>(`${cfg.admin}/status`)).role).toBe('gateway');
    } finally {
      await agent.stop();
    }
  });
});

describe('an API that cannot be reached', () => {
  test('status and the log name what was tried and the two ways out', async () => {
    const t = tempDir();
    try {
      const cfg = await writeAgentConfig(t.path, 'kubeAPIConfig:\n  master: http://127.0.0.1:1\n');
      const agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'edge-0']);
      try {
        const why = await waitFor(async () => {
          const r = await getText(`${cfg.admin}/readyz`).catch(() => null);
          return r && r.body.includes('cannot reach') ? r : null;
        }, 'a readiness reason that says what to do', 15_000);
        expect(why.status).toBe(503);
        expect(why.body).toContain('cannot reach the Kubernetes API through kubeAPIConfig.master http://127.0.0.1:1: connection refused');
        expect(why.body).toContain('edgemesh agent --catalog FILE');
        await agent.waitForLog(/WARN .*cannot reach the Kubernetes API/);
      } finally {
        await agent.stop();
      }
    } finally {
      t.cleanup();
    }
  });
});

describe('gateway labels from its Pod (Kubernetes mode)', () => {
  test("a Gateway is served when its selector matches the gateway Pod's labels, not the config's", async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    try {
      const [mine, theirs] = [await freePort(), await freePort()];
      api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'gw-7f9', namespace: 'kubeedge', labels: { app: 'gw-east' } } });
      for (const [name, port, selector] of [['east', mine, { app: 'gw-east' }], ['default-label', theirs, { kubeedge: 'edgemesh-gateway' }]] as const) {
        api.apply({ apiVersion: 'networking.istio.io/v1alpha3', kind: 'Gateway', metadata: { name, namespace: 'default' }, spec: { selector, servers: [{ port: { number: port, name: 'http', protocol: 'HTTP' }, hosts: ['*'] }] } });
      }
      const cfg = await writeAgentConfig(t.path, `kubeAPIConfig:\n  master: ${api.url}\nmodules:\n  edgeGateway: { includeIP: 127.0.0.1 }\n`, 'gateway');
      const gw = new AgentProcess(['gateway', '--config', cfg.path, '--node-name', 'edge-0'], { env: { POD_NAME: 'gw-7f9', POD_NAMESPACE: 'kubeedge' } });
      try {
        await gw.waitForLog(/gateway labels from its Pod pod=kubeedge\/gw-7f9 labels="app=gw-east"/);
        await gw.waitForLog(new RegExp(`gateway listening address=127\\.0\\.0\\.1:${mine}`));
        await Bun.sleep(500);
        expect(gw.logs).not.toContain(`127.0.0.1:${theirs}`);
      } finally {
        await gw.stop();
      }
    } finally {
      await api.stop();
      t.cleanup();
    }
  });
});

describe('tunnel identity published on the Node (Kubernetes mode)', () => {
  const tunnelCfg = async (dir: string) => {
    writeFileSync(join(dir, 'psk'), 'kube-test-psk\n');
    return `modules:\n  edgeTunnel: { enable: true, listenPort: ${await freePort()}, listenInterfaces: lo, mdns: false, psk: { path: ${join(dir, 'psk')} } }\n`;
  };

  test('the agent merge-patches its peer ID onto its Node, and reads it back through the watch', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0', annotations: { keep: 'me' } } });
    const a = await startAgent(api, t.path, await tunnelCfg(t.path));
    try {
      const peerId = (await a.agent.waitForLog(/tunnel started peerId=(\S+)/))[1]!;
      const node = await waitFor(async () => {
        const n = (await getJson<{ nodes: { name: string; annotations: Record<string, string> }[] }>(`${a.cfg.admin}/debug/catalog`)).nodes.find((x) => x.name === 'edge-0');
        return n?.annotations['edgemesh.io/peer-id'] ? n : null;
      }, () => `annotation\n${a.agent.logs}`);
      expect(node.annotations).toEqual({ keep: 'me', 'edgemesh.io/peer-id': peerId });
      expect(api.patches[0]).toMatchObject({ path: '/api/v1/nodes/edge-0', contentType: 'application/merge-patch+json' });
      await a.agent.waitForLog(/published the tunnel peer ID on this node/);
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });

  const OTHER = '12D3KooWA9AvBpYt17yctznPFxDvR6NFXfyu8kY72jnVLC9SKUG4';

  test('a Node bound to another peer ID is not overwritten: logged with the fix and counted; a binding already right is not patched', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0', annotations: { 'edgemesh.io/peer-id': OTHER } } });
    let a = await startAgent(api, t.path, await tunnelCfg(t.path));
    try {
      await a.agent.waitForLog(/bound to another tunnel peer ID; not overwriting it.*bound=12D3KooWA9AvBp.*--overwrite/);
      expect(api.patches).toEqual([]);
      expect((await getText(`${a.cfg.admin}/metrics`)).body).toContain('edgemesh_tunnel_binding_conflicts_total 1');
      // The agent also sees, in its catalog, that its own binding is not its key, and says so.
      await a.agent.waitForLog(/the catalog binds this node to another peer ID/);
      await a.agent.stop();
      // Bound by hand to this node's key: a restart finds it right and patches nothing.
      const ours = (await a.agent.waitForLog(/tunnel started peerId=(\S+)/))[1]!;
      api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0', annotations: { 'edgemesh.io/peer-id': ours } } });
      a = await startAgent(api, t.path, await tunnelCfg(t.path));
      await a.agent.waitForLog(/the tunnel peer ID is already published on this node/);
      expect(api.patches).toEqual([]);
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });

  test('takeOverBinding: true replaces another binding; a binding that changes while the agent runs is reported and counted', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0', annotations: { 'edgemesh.io/peer-id': OTHER } } });
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-9', annotations: { 'edgemesh.io/peer-id': OTHER } } });
    const cfg = (await tunnelCfg(t.path)).replace('mdns: false', 'mdns: false, takeOverBinding: true');
    const a = await startAgent(api, t.path, cfg);
    try {
      const ours = (await a.agent.waitForLog(/tunnel started peerId=(\S+)/))[1]!;
      await a.agent.waitForLog(/published the tunnel peer ID on this node.*replaced=12D3KooWA9AvBp/);
      expect(api.patches.length).toBe(1);
      expect(ours).not.toBe(OTHER);
      // Someone rebinds edge-9 while we run (once the agent's catalog holds the first binding: before its initial
      // sync, the new binding would be the first one it sees, and nothing changed from its point of view).
      await waitFor(async () => (await getText(`${a.cfg.admin}/readyz`)).status === 200 || null, 'the initial sync', 15_000);
      api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-9', annotations: { 'edgemesh.io/peer-id': ours } } });
      await a.agent.waitForLog(/a node's tunnel binding changed.*node=edge-9/);
      await waitFor(async () => (await getText(`${a.cfg.admin}/metrics`)).body.includes('edgemesh_tunnel_binding_changes_total 1') || null, 'the binding change counted');
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });

  test('without permission to patch Nodes, the agent keeps running and says how to bind by hand', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.forbidPatch = true;
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0' } });
    const a = await startAgent(api, t.path, await tunnelCfg(t.path));
    try {
      await a.agent.waitForLog(/cannot annotate this Node.*forbidden \(403\).*kubectl annotate node edge-0 edgemesh\.io\/peer-id=12D3KooW/);
      expect((await getText(`${a.cfg.admin}/readyz`)).status).toBe(200);
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });

  test('a server that answers PATCH with 405: one line in our words with the fix, no retries', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.noPatch = true;
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-0' } });
    const a = await startAgent(api, t.path, await tunnelCfg(t.path));
    try {
      await a.agent.waitForLog(/cannot annotate this Node.*error="the server does not allow this method here \(405\): this server only reads".*kubectl annotate node edge-0/);
      await Bun.sleep(3000);
      expect(api.patches.length).toBe(1);
      expect(a.agent.logs).not.toContain('Unknown API Status Code');
      expect(a.agent.logs).not.toContain('retrying');
    } finally {
      await a.agent.stop();
      await api.stop();
      t.cleanup();
    }
  });
});
