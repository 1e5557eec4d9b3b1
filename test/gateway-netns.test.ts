/**
 * The gateway follows the machine's addresses (needs root: a network namespace the test creates and removes).
 * With `nic: gw0`, an address added to gw0 is served within 2 s, a removed one released within 2 s, and
 * addresses on other interfaces are never listened on. The original computes its addresses once at start.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, MAIN, isRoot, runCli, tempDir, waitFor } from './helpers.ts';
import { serviceYaml } from './fixtures/objects.ts';

const NS = `emgw${process.pid}`;
const tools = ['ip', 'curl'].every((t) => Bun.which(t));
const ip = (args: string[]) => runCli(args, { bin: ['ip'] });
const inNs = (args: string[]) => runCli(args, { bin: ['ip', 'netns', 'exec', NS] });

describe.skipIf(!isRoot || !tools)('gateway addresses in a network namespace (root)', () => {
  const t = tempDir();
  let gw: AgentProcess;
  let backend: AgentProcess;

  beforeAll(async () => {
    await ip(['netns', 'del', NS]);
    expect((await ip(['netns', 'add', NS])).code).toBe(0);
    await ip(['-n', NS, 'link', 'set', 'lo', 'up']);
    await ip(['-n', NS, 'link', 'add', 'gw0', 'type', 'bridge']);
    await ip(['-n', NS, 'link', 'set', 'gw0', 'up']);
    const script = join(t.path, 'backend.ts');
    writeFileSync(script, "Bun.serve({ hostname: '127.0.0.1', port: 18081, fetch: () => new Response('ns-web') });\nconsole.log('serving');\n");
    backend = new AgentProcess([script], { bin: ['ip', 'netns', 'exec', NS, process.execPath] });
    await backend.waitForLog(/serving/);
    const catalog = join(t.path, 'catalog.yaml');
    writeFileSync(catalog, `${serviceYaml({ name: 'web', clusterIP: '10.96.0.10', port: 80, target: 18081 })}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: edge, namespace: shop }
spec:
  selector: { kubeedge: edgemesh-gateway }
  servers: [{ port: { number: 8080, name: http, protocol: HTTP }, hosts: ["*"] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec: { hosts: ["*"], gateways: [edge], http: [{ route: [{ destination: { host: web } }] }] }
`);
    const cfg = join(t.path, 'gateway.yaml');
    writeFileSync(cfg, `commonConfig: { stateDir: ${t.path}/state, adminAddress: "" }\nmodules:\n  edgeGateway: { nic: gw0 }\n`);
    gw = new AgentProcess(['gateway', '--config', cfg, '--catalog', catalog, '--node-name', 'n1'], { bin: ['ip', 'netns', 'exec', NS, process.execPath, MAIN] });
    await gw.waitForLog(/started/);
  }, 30_000);

  afterAll(async () => {
    await gw?.stop();
    await backend?.stop();
    await ip(['netns', 'del', NS]);
    t.cleanup();
  });

  const curl = async (addr: string) => (await inNs(['curl', '-s', '--max-time', '1', `http://${addr}:8080/`])).stdout;

  test('an added address is served within 2 s, a removed one released within 2 s; other interfaces never', async () => {
    expect(await curl('127.0.0.1')).toBe(''); // loopback is not on gw0
    await ip(['-n', NS, 'addr', 'add', '10.66.0.1/24', 'dev', 'gw0']);
    let t0 = performance.now();
    await waitFor(async () => (await curl('10.66.0.1')) === 'ns-web' || null, 'the new address served', 5000, 50);
    const served = performance.now() - t0;
    // Another subnet: deleting a subnet's primary address deletes its secondaries too (kernel default).
    await ip(['-n', NS, 'addr', 'add', '10.67.0.2/24', 'dev', 'gw0']);
    await waitFor(async () => (await curl('10.67.0.2')) === 'ns-web' || null, 'the second address served', 5000, 50);
    await ip(['-n', NS, 'addr', 'del', '10.66.0.1/24', 'dev', 'gw0']);
    t0 = performance.now();
    await gw.waitForLog(/gateway listener closed address=10\.66\.0\.1:8080/, 5000);
    const released = performance.now() - t0;
    console.log(`address served after ${served.toFixed(0)} ms, released after ${released.toFixed(0)} ms`);
    expect(served).toBeLessThan(2000);
    expect(released).toBeLessThan(2000);
    expect(await curl('10.67.0.2')).toBe('ns-web');
    expect(await curl('127.0.0.1')).toBe('');
  }, 30_000);
});
