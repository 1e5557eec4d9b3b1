/**
 * Discovery inside a LAN (needs root): two nodes on one L2 segment (two namespaces joined by a veth pair), the
 * catalog binding their peer IDs but carrying no address for either. The agents find each other by multicast DNS
 * under the rendezvous name. The endpoint is a hostNetwork one at b's own address, which a holds an authenticated
 * direct connection to, so the proxy dials it without the tunnel (the original sends it through libp2p: its #551).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, MAIN, isRoot, runCli, tempDir, waitFor } from './helpers.ts';

const tools = ['ip', 'curl'].every((t) => Bun.which(t));
const tag = `${process.pid % 10000}`;
const NS = { a: `nma${tag}`, b: `nmb${tag}` };
const IP = { a: '10.77.0.1', b: '10.77.0.2' };

describe.skipIf(!isRoot || !tools)('mDNS discovery in one LAN (root)', () => {
  const t = tempDir('edgemesh-mdns-');
  const agents: AgentProcess[] = [];
  let backend: AgentProcess;
  const inNs = (n: 'a' | 'b', args: string[]) => runCli(args, { bin: ['ip', 'netns', 'exec', NS[n]] });

  beforeAll(async () => {
    const sh = [
      ...Object.values(NS).map((n) => `(ip netns del ${n} 2>/dev/null || true) && ip netns add ${n} && ip -n ${n} link set lo up`),
      `ip link add ma${tag} netns ${NS.a} type veth peer name mb${tag} netns ${NS.b}`,
      `ip -n ${NS.a} addr add ${IP.a}/24 dev ma${tag} && ip -n ${NS.a} link set ma${tag} up && ip -n ${NS.a} route add default dev ma${tag}`,
      `ip -n ${NS.b} addr add ${IP.b}/24 dev mb${tag} && ip -n ${NS.b} link set mb${tag} up && ip -n ${NS.b} route add default dev mb${tag}`,
    ].join(' && ');
    expect((await runCli(['-ec', sh], { bin: ['sh'] })).code).toBe(0);
    const catalog = join(t.path, 'catalog.yaml');
    writeFileSync(catalog, '');
    writeFileSync(join(t.path, 'psk'), randomBytes(32).toString('base64'));
    const ids: Record<string, string> = {};
    for (const n of ['a', 'b'] as const) {
      mkdirSync(join(t.path, n));
      writeFileSync(join(t.path, n, 'config.yaml'), JSON.stringify({
        catalog: { file: catalog },
        commonConfig: { stateDir: join(t.path, n, 'state'), adminAddress: '127.0.0.1:10551' },
        modules: {
          edgeDNS: { enable: false },
          edgeProxy: { enable: n === 'a', listenAddress: '127.0.0.1', interception: 'none' },
          edgeTunnel: { enable: true, mdns: true, rendezvous: `edgemesh-test-${tag}`, psk: { path: join(t.path, 'psk') } },
        },
      }));
      const r = await runCli(['identity', '--json', '--config', join(t.path, n, 'config.yaml'), '--node-name', n]);
      ids[n] = (JSON.parse(r.stdout) as { peerId: string }).peerId;
    }
    // Peer IDs bound, no addresses: only mDNS can tell a where b is.
    writeFileSync(catalog, [
      ...(['a', 'b'] as const).map((n) => `apiVersion: v1\nkind: Node\nmetadata:\n  name: ${n}\n  annotations: { edgemesh.io/peer-id: ${ids[n]} }\n`),
      'apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\nspec: { clusterIP: 10.96.6.1, ports: [{ name: p, port: 80 }] }\n',
      `apiVersion: v1\nkind: Endpoints\nmetadata: { name: web, namespace: default }\nsubsets: [{ addresses: [{ ip: ${IP.b}, nodeName: b }], ports: [{ name: p, port: 8080 }] }]\n`,
    ].join('---\n'));
    const server = join(t.path, 'server.ts');
    writeFileSync(server, "Bun.serve({ hostname: '0.0.0.0', port: 8080, fetch: () => new Response('found by mDNS') }); console.log('serving');\n");
    backend = new AgentProcess([server], { bin: ['ip', 'netns', 'exec', NS.b, process.execPath] });
    await backend.waitForLog(/serving/);
    for (const n of ['b', 'a'] as const) {
      agents.push(new AgentProcess(['agent', '--config', join(t.path, n, 'config.yaml'), '--node-name', n], { bin: ['ip', 'netns', 'exec', NS[n], process.execPath, MAIN] }));
    }
  }, 60_000);

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await backend?.stop();
    for (const n of Object.values(NS)) await runCli(['netns', 'del', n], { bin: ['ip'] });
    t.cleanup();
  });

  test('the agents find each other; a hostNetwork endpoint of the other node is dialed directly, not tunnelled', async () => {
    const status = async () => JSON.parse((await inNs('a', ['curl', '-s', '-m', '2', 'http://127.0.0.1:10551/status'])).stdout || '{}') as {
      tunnel?: { peers: { node: string; path: string; remoteAddr: string }[] };
      proxy?: { service: string; listenPort: number }[];
    };
    const peer = await waitFor(async () => (await status()).tunnel?.peers.find((p) => p.node === 'b') ?? null, () => `b discovered by mDNS\n${agents[1]!.logs}`, 20_000, 200);
    expect(peer.path).toBe('direct');
    expect(peer.remoteAddr).toContain(`/ip4/${IP.b}/tcp/`); // whichever side dialed first
    const port = (await status()).proxy!.find((p) => p.service === 'default/web:p')!.listenPort;
    const r = await inNs('a', ['curl', '-s', '-m', '5', `http://127.0.0.1:${port}/`]);
    expect(r.stdout).toBe('found by mDNS');
    const metrics = async (n: 'a' | 'b') => (await inNs(n, ['curl', '-s', 'http://127.0.0.1:10551/metrics'])).stdout;
    expect(await metrics('b')).toMatch(/^edgemesh_tunnel_streams_in_total 0$/m);
    expect(await metrics('a')).toMatch(/^edgemesh_tunnel_streams_out_total 0$/m);
  }, 40_000);
});
