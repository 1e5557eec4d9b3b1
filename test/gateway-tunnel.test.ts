/**
 * A gateway route whose endpoint is on another node: `edgemesh gateway` on node "gw" and an agent on node "b",
 * both with the tunnel (PSK on, peer IDs bound in the catalog), on loopback. The gateway reaches b's endpoint
 * through b's agent exactly as the proxy would (the one Dialer), and keeps the backend connection alive between
 * requests.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, freePort, getText, runCli, tempDir, waitFor, writeAgentConfig } from './helpers.ts';
import { serviceYaml } from './fixtures/objects.ts';

describe('gateway → endpoint on another node, through the tunnel', () => {
  const t = tempDir('edgemesh-gwtun-');
  const backend = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: (req) => new Response(`from b: ${new URL(req.url).pathname}`) });
  const procs: AgentProcess[] = [];
  let gwPort = 0;
  let bAdmin = '';

  beforeAll(async () => {
    const psk = join(t.path, 'psk');
    writeFileSync(psk, randomBytes(32).toString('base64') + '\n');
    const catalog = join(t.path, 'catalog.yaml');
    writeFileSync(catalog, ''); // written whole below, once the peer IDs are known
    const nodes: { name: string; role: 'agent' | 'gateway'; dir: string; port: number; peerId: string; cfg: string; admin: string }[] = [];
    gwPort = await freePort();
    for (const [name, role] of [['gw', 'gateway'], ['b', 'agent']] as const) {
      const dir = join(t.path, name);
      mkdirSync(dir);
      const port = await freePort();
      const extra = role === 'agent'
        ? `catalog: { file: ${catalog} }\nmodules:\n  edgeTunnel: { enable: true, listenPort: ${port}, listenInterfaces: lo, mdns: false, directHostEndpoints: false, psk: { path: ${psk} } }\n`
        : `catalog: { file: ${catalog} }\nmodules:\n  edgeGateway: { includeIP: 127.0.0.1 }\n  edgeTunnel: { enable: true, listenPort: ${port}, listenInterfaces: lo, mdns: false, directHostEndpoints: false, psk: { path: ${psk} } }\n`;
      const cfg = await writeAgentConfig(dir, extra, role);
      const id = await runCli(['identity', '--json', '--config', cfg.path, '--node-name', name]);
      expect(id.code).toBe(0);
      nodes.push({ name, role, dir, port, peerId: (JSON.parse(id.stdout) as { peerId: string }).peerId, cfg: cfg.path, admin: cfg.admin });
    }
    const docs = nodes.map((n, i) => `apiVersion: v1
kind: Node
metadata:
  name: ${n.name}
  annotations: { edgemesh.io/peer-id: ${n.peerId}, edgemesh.io/tunnel-addresses: /ip4/127.0.0.1/tcp/${n.port} }
status: { addresses: [{ type: InternalIP, address: 127.0.0.${20 + i} }] }`);
    docs.push(serviceYaml({ name: 'web', clusterIP: '10.96.0.10', port: 80, target: backend.port!, nodeName: 'b' }), `apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: edge, namespace: shop }
spec:
  selector: { kubeedge: edgemesh-gateway }
  servers: [{ port: { number: ${gwPort}, name: http, protocol: HTTP }, hosts: ["*"] }]`, `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec: { hosts: ["*"], gateways: [edge], http: [{ route: [{ destination: { host: web } }] }] }`);
    writeFileSync(catalog, docs.join('\n---\n') + '\n');
    for (const n of nodes) {
      const p = new AgentProcess([n.role, '--config', n.cfg, '--node-name', n.name]);
      procs.push(p);
      await waitFor(async () => (await fetch(`${n.admin}/readyz`).catch(() => null))?.status === 200, () => `${n.name} ready\n${p.logs}`, 20_000);
    }
    bAdmin = nodes[1]!.admin;
  }, 60_000);

  afterAll(async () => {
    for (const p of procs) await p.stop();
    backend.stop(true);
    t.cleanup();
  });

  test('requests reach the endpoint on b through b\'s agent; the tunnel stream is reused for later requests', async () => {
    const streams = async () => Number(/^edgemesh_tunnel_streams_in_total (\d+)/m.exec((await getText(`${bAdmin}/metrics`)).body)?.[1] ?? NaN);
    const before = await streams();
    const r = await waitFor(async () => {
      const res = await fetch(`http://127.0.0.1:${gwPort}/hello`).catch(() => null);
      return res?.status === 200 ? res.text() : null;
    }, 'an answer through the tunnel', 15_000, 200);
    expect(r).toBe('from b: /hello');
    for (let i = 0; i < 20; i++) expect(await (await fetch(`http://127.0.0.1:${gwPort}/n${i}`)).text()).toBe(`from b: /n${i}`);
    const after = await streams();
    expect(after).toBeGreaterThan(before); // b dialed its endpoint for the gateway
    expect(after - before).toBeLessThan(10); // keep-alive: not one tunnel stream per request
  }, 30_000);
});
