/**
 * Kernel forwarding's fallback when the kernel refuses the ClientIP-affinity rules (an old kernel, no xt_recent):
 * a stand-in interception backend refuses them the way `nft -f` would, and the affinity service must move to
 * the listener (reported so, and serving through it with its affinity), while the others keep the kernel path.
 * No root needed: the backend is injected.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Catalog } from '../src/catalog/catalog.ts';
import type { Service } from '../src/catalog/model.ts';
import { mergeConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { type PortMapping, ProxyModule } from '../src/proxy/index.ts';
import { UdpConntrack } from '../src/proxy/conntrack.ts';
import type { RulesBackend } from '../src/proxy/rules.ts';

describe('kernel forwarding without kernel support for affinity', () => {
  const logger = createMemoryLogger('debug');
  const catalog = new Catalog({ logger });
  const backends = ['a', 'b'].map((name) => Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response(name) }));
  const applied: PortMapping[][] = [];
  let refused = 0;
  const rules: RulesBackend = {
    name: 'stand-in',
    hashesSourceAddress: false,
    async apply(ports) {
      if (ports.some((p) => (p.kernel?.affinitySec ?? 0) > 0)) {
        refused++;
        throw new Error('Error: Could not process rule: Operation not supported');
      }
      applied.push(ports.map((p) => ({ ...p })));
    },
    async cleanup() {},
  };
  let proxy: ProxyModule;

  const service = (name: string, clusterIP: string, affinity: boolean): Service => ({
    namespace: 'shop', name, type: 'ClusterIP', clusterIPs: [clusterIP], headless: false, externalIPs: [], loadBalancerIPs: [],
    ports: [{ name: 'p', protocol: 'TCP', port: 80, targetPort: 'p', nodePort: 0 }],
    sessionAffinity: affinity ? 'ClientIP' : 'None', sessionAffinityTimeout: 300, labels: {}, proxied: true,
  });

  beforeAll(async () => {
    for (const [name, ip, affinity] of [['sticky', '10.96.5.1', true], ['plain', '10.96.5.2', false]] as const) {
      catalog.upsert({ kind: 'services', value: service(name, ip, affinity) });
      catalog.upsert({
        kind: 'endpoints',
        value: { namespace: 'shop', name, from: 'Endpoints', endpoints: backends.map((b, i) => ({ ip: '127.0.0.1', nodeName: 'n1', podName: `${name}-${i}`, hostname: '', ready: true, ports: [{ name: 'p', port: b.port!, protocol: 'TCP' as const }] })) },
      });
    }
    catalog.flush();
    const { config } = mergeConfig('agent', 'edge', { modules: { edgeProxy: { enable: true, listenAddress: '127.0.0.1', interception: 'nftables' } } });
    proxy = new ProxyModule({ config, catalog, nodeName: 'n1', logger, rules });
    await proxy.start();
  });
  afterAll(async () => {
    await proxy.stop();
    for (const b of backends) b.stop(true);
  });

  test('the affinity service moves to the listener and keeps its affinity there; the other stays on the kernel path', async () => {
    expect(refused).toBeGreaterThanOrEqual(1);
    const last = applied.at(-1)!;
    expect(last.find((p) => p.service === 'shop/sticky:p')?.kernel).toBeNull();
    expect(last.find((p) => p.service === 'shop/plain:p')?.kernel?.endpoints).toHaveLength(2);
    const paths = Object.fromEntries(proxy.ports().map((p) => [p.service, p.path]));
    expect(paths['shop/sticky:p']).toBe('proxy');
    expect(paths['shop/plain:p']).toMatch(/^kernel/);
    expect(logger.lines.some((l) => l.includes('refused the ClientIP-affinity rules'))).toBe(true);
    // Through the sticky service's listener (what its DNAT rule points at): one client, one backend, every time.
    const listen = proxy.ports().find((p) => p.service === 'shop/sticky:p')!;
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(await (await fetch(`http://${listen.listenHost}:${listen.listenPort}/`, { headers: { connection: 'close' } })).text());
    expect(seen.size).toBe(1);
    expect([...seen].join()).toMatch(/^[ab]$/);
  });
});

describe('kernel forwarding of UDP when the conntrack tool cannot work', () => {
  const service: Service = {
    namespace: 'shop', name: 'dns', type: 'ClusterIP', clusterIPs: ['10.96.6.1'], headless: false, externalIPs: [], loadBalancerIPs: [],
    ports: [{ name: 'u', protocol: 'UDP', port: 53, targetPort: 'u', nodePort: 0 }],
    sessionAffinity: 'None', sessionAffinityTimeout: 0, labels: {}, proxied: true,
  };
  /** An agent with a stand-in rules backend and a conntrack tool that answers `-L` with `listing`. */
  async function agent(listing: { code: number; err: string; out?: string }, echoPort: number) {
    const logger = createMemoryLogger('debug');
    const catalog = new Catalog({ logger });
    catalog.upsert({ kind: 'services', value: service });
    catalog.upsert({ kind: 'endpoints', value: { namespace: 'shop', name: 'dns', from: 'Endpoints', endpoints: [{ ip: '127.0.0.1', nodeName: 'n1', podName: 'dns-0', hostname: '', ready: true, ports: [{ name: 'u', port: echoPort, protocol: 'UDP' as const }] }] } });
    catalog.flush();
    const applied: PortMapping[][] = [];
    const rules: RulesBackend = { name: 'stand-in', hashesSourceAddress: false, async apply(ports) { applied.push(ports.map((p) => ({ ...p }))); }, async cleanup() {} };
    const deletes: string[][] = [];
    const conntrack = new UdpConntrack(logger, async (args) => {
      if (args[0] === '-L') return { out: '', ...listing };
      deletes.push(args);
      return { code: 1, out: '', err: '0 flow entries have been deleted.' };
    });
    const { config } = mergeConfig('agent', 'edge', { modules: { edgeProxy: { enable: true, listenAddress: '127.0.0.1', interception: 'nftables' } } });
    const proxy = new ProxyModule({ config, catalog, nodeName: 'n1', logger, rules, conntrack });
    await proxy.start();
    return { proxy, applied, logger, conntrack, deletes };
  }
  let echo: { port: number; close(): void };
  beforeAll(async () => {
    echo = await Bun.udpSocket({ hostname: '127.0.0.1', socket: { data(s, b, port, addr) { s.send(b, port, addr); }, error() {} } });
  });
  afterAll(() => echo.close());

  test('a tool that cannot list sends UDP back to the listener, which serves it; a working one keeps the kernel path', async () => {
    const broken = await agent({ code: 1, err: 'conntrack v1.4.7 (conntrack-tools): Operation failed: Protocol not supported' }, echo.port);
    try {
      expect(broken.applied[0]!.find((p) => p.service === 'shop/dns:u')?.kernel?.endpoints).toHaveLength(1);
      expect(broken.applied.at(-1)!.find((p) => p.service === 'shop/dns:u')?.kernel).toBeNull();
      expect(broken.conntrack.broken).toContain('Protocol not supported');
      expect(broken.logger.lines.filter((l) => l.includes('cannot list entries'))).toHaveLength(1);
      const port = broken.proxy.ports().find((p) => p.service === 'shop/dns:u')!;
      expect(port.path).toBe('proxy');
      // Served through the listener (what the DNAT rule now points at), through real sockets.
      const answer = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no answer through the listener')), 2000);
        void Bun.udpSocket({ socket: { data(s, b) { clearTimeout(timer); s.close(); resolve(Buffer.from(b).toString()); }, error() {} } }).then((s) => s.send('ping', port.listenPort, port.listenHost));
      });
      expect(answer).toBe('ping');
    } finally {
      await broken.proxy.stop();
    }
    // Lines it cannot read (truncated, garbage) are skipped: nothing is deleted on their account.
    const garbage = 'udp 17 29 src=10.200.0.2 dst=10.96.6.1 sport=4000\n\u0000\u00ff nonsense src= sport=x\nsrc=1.2.3.4 src=5.6.7.8 sport=1\n';
    const working = await agent({ code: 0, err: 'conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.', out: garbage }, echo.port);
    try {
      expect(working.deletes).toEqual([]);
      expect(working.applied.at(-1)!.find((p) => p.service === 'shop/dns:u')?.kernel?.endpoints).toHaveLength(1);
      expect(working.conntrack.broken).toBeNull();
      expect(working.proxy.ports().find((p) => p.service === 'shop/dns:u')!.path).toMatch(/^kernel/);
    } finally {
      await working.proxy.stop();
    }
  });
});
