/**
 * EdgeDNS through real sockets: the agent as a process answering from a catalog file, forwarding to a fake
 * upstream on loopback (never the host's resolver).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Catalog } from '../src/catalog/catalog.ts';
import { mergeConfig } from '../src/config/load.ts';
import { DnsModule } from '../src/dns/index.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { FakeApiServer } from './fixtures/apiserver.ts';
import { FakeUpstream, ask, decode, query, tcpExchange, udpExchange } from './fixtures/dns.ts';
import { AgentProcess, freePort, getText, tempDir, waitFor, writeAgentConfig } from './helpers.ts';

const CATALOG = `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports: [{ name: http, port: 80, targetPort: 8080 }, { name: dns, port: 53, protocol: UDP }]
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: shop }
spec: { clusterIP: None, ports: [{ name: pg, port: 5432 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: db-1, namespace: shop, labels: { kubernetes.io/service-name: db } }
addressType: IPv4
ports: [{ name: pg, port: 5432 }]
endpoints:
- { addresses: [10.244.1.10], hostname: db-0, nodeName: edge-1 }
- { addresses: [10.244.2.11], hostname: db-1, nodeName: edge-2 }
- { addresses: [10.244.3.12], nodeName: edge-3, conditions: { ready: false } }
- { addresses: [10.244.4.13], nodeName: edge-4 }
---
apiVersion: v1
kind: Service
metadata: { name: ext, namespace: shop }
spec: { type: ExternalName, externalName: example.test }
`;

function bigHeadless(n: number): string {
  const eps = Array.from({ length: n }, (_, i) => `- { addresses: [10.245.${i >> 8}.${i & 255}] }`).join('\n');
  return `---
apiVersion: v1
kind: Service
metadata: { name: big, namespace: shop }
spec: { clusterIP: None }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: big-1, namespace: shop, labels: { kubernetes.io/service-name: big } }
addressType: IPv4
endpoints:
${eps}
`;
}

describe('EdgeDNS (agent process)', () => {
  const t = tempDir();
  const up = new FakeUpstream();
  const dead = { port: 0 };
  let agent: AgentProcess;
  let port = 0;
  let catalogPath = '';
  let admin = '';

  beforeAll(async () => {
    await up.start();
    up.records.set('example.test', [{ name: 'example.test', type: 'A', ttl: 60, data: '192.0.2.1' }]);
    up.records.set('big.test', Array.from({ length: 60 }, (_, i) => ({ name: 'big.test', type: 'A' as const, ttl: 60, data: `192.0.2.${i + 1}` })));
    up.truncateUdp.add('big.test');
    dead.port = await freePort(); // nothing listens there: the forwarder must fail over
    port = await freePort();
    catalogPath = join(t.path, 'catalog.yaml');
    writeFileSync(catalogPath, CATALOG + bigHeadless(100));
    const cfg = await writeAgentConfig(t.path, `catalog: { file: ${catalogPath} }
modules:
  edgeDNS:
    enable: true
    listenAddress: 127.0.0.1
    listenPort: ${port}
    upstreamServers: ["127.0.0.1:${dead.port}", "127.0.0.1:${up.port}"]
    upstreamTimeoutMs: 300
    tcpIdleTimeout: 1
`);
    admin = cfg.admin;
    agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'edge-1']);
    await waitFor(async () => (await getText(`${cfg.admin}/readyz`)).status === 200, 'readyz');
  });

  afterAll(async () => {
    await agent.stop();
    await up.stop();
    t.cleanup();
  });

  test('A and AAAA of a ClusterIP service; question echoed as asked; authoritative', async () => {
    const r = await ask(port, 'WeB.Shop.SVC.cluster.local');
    expect(r.rcode).toBe('NOERROR');
    expect(r.flag_aa).toBe(true);
    expect(r.questions![0]!.name).toBe('WeB.Shop.SVC.cluster.local');
    expect(r.answers!.map((a) => [a.type, a.data, a.ttl])).toEqual([['A', '10.96.0.10', 30]]);
    const six = await ask(port, 'web.shop.svc.cluster.local', 'AAAA');
    expect(six.answers!.map((a) => a.data)).toEqual(['fd00::10']);
  });

  test('NXDOMAIN with the SOA; NODATA with the SOA; empty non-terminals exist', async () => {
    const nx = await ask(port, 'nope.shop.svc.cluster.local');
    expect(nx.rcode).toBe('NXDOMAIN');
    expect(nx.authorities![0]!.type).toBe('SOA');
    const nodata = await ask(port, 'web.shop.svc.cluster.local', 'TXT');
    expect(nodata.rcode).toBe('NOERROR');
    expect(nodata.answers).toEqual([]);
    expect(nodata.authorities![0]!.type).toBe('SOA');
    expect((await ask(port, 'shop.svc.cluster.local')).rcode).toBe('NOERROR');
  });

  test('headless: ready endpoint IPs, hostnames, SRV with targets and additional records', async () => {
    const r = await ask(port, 'db.shop.svc.cluster.local');
    expect(r.answers!.map((a) => a.data).sort()).toEqual(['10.244.1.10', '10.244.2.11', '10.244.4.13']);
    expect((await ask(port, 'db-0.db.shop.svc.cluster.local')).answers!.map((a) => a.data)).toEqual(['10.244.1.10']);
    expect((await ask(port, '10-244-4-13.db.shop.svc.cluster.local')).answers!.map((a) => a.data)).toEqual(['10.244.4.13']);
    const srv = await ask(port, '_pg._tcp.db.shop.svc.cluster.local', 'SRV');
    const targets = srv.answers!.map((a) => (a.data as { target: string; port: number })).map((d) => `${d.target}:${d.port}`).sort();
    expect(targets).toEqual(['10-244-4-13.db.shop.svc.cluster.local:5432', 'db-0.db.shop.svc.cluster.local:5432', 'db-1.db.shop.svc.cluster.local:5432']);
    expect(srv.additionals!.filter((a) => a.type === 'A').length).toBe(3);
    const svcSrv = await ask(port, '_http._tcp.web.shop.svc.cluster.local', 'SRV');
    expect(svcSrv.answers!.map((a) => a.data)).toEqual([{ priority: 0, weight: 100, port: 80, target: 'web.shop.svc.cluster.local' }]);
  });

  test('ExternalName → CNAME; PTR for cluster and endpoint IPs; pod names; ANY is minimal', async () => {
    const c = await ask(port, 'ext.shop.svc.cluster.local');
    expect(c.answers!.map((a) => [a.type, a.data])).toEqual([['CNAME', 'example.test']]);
    expect((await ask(port, '10.0.96.10.in-addr.arpa', 'PTR')).answers!.map((a) => a.data)).toEqual(['web.shop.svc.cluster.local']);
    expect((await ask(port, '10.1.244.10.in-addr.arpa', 'PTR')).answers!.map((a) => a.data)).toEqual(['db-0.db.shop.svc.cluster.local']);
    expect((await ask(port, '10-1-2-3.shop.pod.cluster.local')).answers!.map((a) => a.data)).toEqual(['10.1.2.3']);
    const any = await ask(port, 'web.shop.svc.cluster.local', 'ANY');
    expect(any.answers!.length).toBe(1);
  });

  test('forwarding: failover past a dead upstream, cache with aging TTLs, one upstream query for concurrent twins', async () => {
    const r = await ask(port, 'example.test');
    expect(r.answers!.map((a) => a.data)).toEqual(['192.0.2.1']);
    expect(up.count('example.test')).toBe(1);
    await Bun.sleep(1100);
    const cached = await ask(port, 'EXAMPLE.test');
    expect(up.count('example.test')).toBe(1);
    expect(cached.questions![0]!.name).toBe('EXAMPLE.test');
    expect(cached.answers![0]!.ttl).toBeLessThan(60);
    up.records.set('twins.test', [{ name: 'twins.test', type: 'A', ttl: 60, data: '192.0.2.9' }]);
    up.delayMs = 100;
    const all = await Promise.all(Array.from({ length: 10 }, () => ask(port, 'twins.test')));
    up.delayMs = 0;
    expect(all.every((x) => x.answers![0]!.data === '192.0.2.9')).toBe(true);
    expect(up.count('twins.test')).toBe(1);
    // Negative answers are cached too (bounded by maxNegativeTTL).
    expect((await ask(port, 'missing.test')).rcode).toBe('NXDOMAIN');
    expect((await ask(port, 'missing.test')).rcode).toBe('NXDOMAIN');
    expect(up.count('missing.test')).toBe(1);
  });

  test('each upstream query leaves from a port of its own; a forged answer from another port is ignored', async () => {
    const before = up.sources.length;
    for (let i = 1; i <= 6; i++) {
      up.records.set(`port${i}.test`, [{ name: `port${i}.test`, type: 'A', ttl: 60, data: `192.0.2.${50 + i}` }]);
      expect((await ask(port, `port${i}.test`)).answers!.map((a) => a.data)).toEqual([`192.0.2.${50 + i}`]);
    }
    const ports = up.sources.slice(before);
    expect(ports.length).toBe(6);
    expect(new Set(ports).size).toBeGreaterThanOrEqual(5); // one shared socket: 1
    up.records.set('spoofed.test', [{ name: 'spoofed.test', type: 'A', ttl: 60, data: '192.0.2.77' }]);
    up.spoof = true;
    try {
      const r = await ask(port, 'spoofed.test');
      expect(up.spoofsSent).toBe(1);
      expect(r.answers!.map((a) => a.data)).toEqual(['192.0.2.77']);
    } finally {
      up.spoof = false;
    }
  });

  test('TCP: a query sent a byte at a time is answered, and the server keeps serving others', async () => {
    const q = query('example.test');
    const framed = new Uint8Array(q.length + 2);
    framed[0] = q.length >> 8;
    framed[1] = q.length & 0xff;
    framed.set(q, 2);
    const got = Promise.withResolvers<Uint8Array>();
    let buf = new Uint8Array(0);
    const sock = await Bun.connect({
      hostname: '127.0.0.1', port,
      socket: {
        data: (_s, d) => {
          const next = new Uint8Array(buf.length + d.length);
          next.set(buf);
          next.set(d, buf.length);
          buf = next;
          if (buf.length >= 2 && buf.length >= 2 + ((buf[0]! << 8) | buf[1]!)) got.resolve(buf.subarray(2));
        },
      },
    });
    for (const b of framed) {
      sock.write(new Uint8Array([b]));
      await Bun.sleep(1);
    }
    const r = decode(await Promise.race([got.promise, Bun.sleep(3000).then(() => null)]));
    sock.end();
    expect(r.answers!.map((a) => a.data)).toEqual(['192.0.2.1']);
    expect((await ask(port, 'example.test', 'A', { tcp: true })).answers!.map((a) => a.data)).toEqual(['192.0.2.1']);
  });

  test('a truncated upstream answer is retried over TCP; UDP clients get TC when it exceeds their limit', async () => {
    const small = await ask(port, 'big.test');
    expect(small.flag_tc).toBe(true);
    expect(up.tcpCounts.get('big.test')).toBe(1);
    const viaTcp = await ask(port, 'big.test', 'A', { tcp: true });
    expect(viaTcp.answers!.length).toBe(60);
    const edns = await ask(port, 'big.test', 'A', { edns: 4096 });
    expect(edns.flag_tc).toBe(false);
    expect(edns.answers!.length).toBe(60);
  });

  test('EDNS: a large zone answer truncates without EDNS, fits with it, and always over TCP', async () => {
    const plain = await ask(port, 'big.shop.svc.cluster.local');
    expect(plain.flag_tc).toBe(true);
    expect(plain.answers).toEqual([]);
    const edns = await ask(port, 'big.shop.svc.cluster.local', 'A', { edns: 4096 });
    expect(edns.flag_tc).toBe(false);
    expect(edns.answers!.length).toBe(100);
    expect(edns.additionals!.some((a) => a.type === 'OPT')).toBe(true);
    expect((await ask(port, 'big.shop.svc.cluster.local', 'A', { tcp: true })).answers!.length).toBe(100);
  });

  test('TCP: several queries on one connection; idle connections are closed', async () => {
    const answers = await tcpExchange(port, [query('web.shop.svc.cluster.local'), query('db-1.db.shop.svc.cluster.local'), query('example.test')]);
    expect(answers.map((a) => decode(a).answers![0]!.data).sort()).toEqual(['10.244.2.11', '10.96.0.10', '192.0.2.1']);
    let closed = false;
    await Bun.connect({ hostname: '127.0.0.1', port, socket: { data() {}, close() { closed = true; } } });
    // tcpIdleTimeout is 1 s; Bun looks at socket deadlines every ~4 s.
    await waitFor(() => closed, 'idle close', 6000);
  });

  test('TCP: a connection asking every 250 ms for 6 s stays open past tcpIdleTimeout (1 s), then closes once idle', async () => {
    let answers = 0;
    let closedAt = 0;
    const s = await Bun.connect({ hostname: '127.0.0.1', port, socket: { data(_s, d) { answers += d.length > 0 ? 1 : 0; }, close() { closedAt = Date.now(); } } });
    let asked = 0;
    for (const until = Date.now() + 6000; Date.now() < until && !closedAt; asked++) {
      const q = query('web.shop.svc.cluster.local');
      const f = new Uint8Array(q.length + 2);
      f[1] = q.length;
      f.set(q, 2);
      s.write(f);
      await Bun.sleep(250);
    }
    // Without re-arming, Bun's deadline (armed at 1 s, checked every ~4 s) closed it after a few seconds of queries.
    expect(closedAt).toBe(0);
    expect(answers).toBeGreaterThanOrEqual(asked - 1);
    const idleSince = Date.now();
    await waitFor(() => closedAt || null, 'idle close', 8000);
    expect(closedAt - idleSince).toBeGreaterThanOrEqual(900);
  }, 20_000);

  test('bad input: FORMERR, NOTIMP, REFUSED, silence for garbage and responses', async () => {
    expect(await udpExchange(port, new Uint8Array([1, 2, 3]), 300)).toBeNull();
    // Header fine, question cut short.
    const cut = query('web.shop.svc.cluster.local').slice(0, 20);
    expect(decode(await udpExchange(port, cut)).rcode).toBe('FORMERR');
    // A compression loop in the question.
    const loop = new Uint8Array([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]);
    expect(decode(await udpExchange(port, loop)).rcode).toBe('FORMERR');
    // Zero and two questions.
    const zero = new Uint8Array([0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(decode(await udpExchange(port, zero)).rcode).toBe('FORMERR');
    const q1 = query('web.shop.svc.cluster.local');
    const two = new Uint8Array(q1.length * 2 - 12);
    two.set(q1);
    two.set(q1.subarray(12), q1.length);
    two[5] = 2;
    expect(decode(await udpExchange(port, two)).rcode).toBe('FORMERR');
    // Opcode STATUS (2) → NOTIMP; CHAOS class → NOTIMP; AXFR → REFUSED.
    const status = query('web.shop.svc.cluster.local');
    status[2] = (status[2]! & 0x87) | (2 << 3);
    expect(decode(await udpExchange(port, status)).rcode).toBe('NOTIMP');
    const chaos = query('version.bind', 'TXT');
    chaos[chaos.length - 1] = 3;
    expect(decode(await udpExchange(port, chaos)).rcode).toBe('NOTIMP');
    expect((await ask(port, 'cluster.local', 'AXFR')).rcode).toBe('REFUSED');
    // Oversized: a 4,000-byte datagram with a valid header and garbage after it.
    const big = new Uint8Array(4000).fill(0x41);
    big.set(query('web.shop.svc.cluster.local').subarray(0, 12));
    expect(decode(await udpExchange(port, big)).rcode).toBe('FORMERR');
    // Over TCP: a maximal 65,535-byte garbage message, then a good query on the same connection.
    const huge = new Uint8Array(65535).fill(0xff);
    huge.set(query('web.shop.svc.cluster.local').subarray(0, 12));
    const [bad, good] = await tcpExchange(port, [huge, query('web.shop.svc.cluster.local')]);
    expect(decode(bad!).rcode).toBe('FORMERR');
    expect(decode(good!).answers[0]!.data).toBe('10.96.0.10');
    // A response sent to the server is ignored.
    const resp = query('web.shop.svc.cluster.local');
    resp[2] = resp[2]! | 0x80;
    expect(await udpExchange(port, resp, 300)).toBeNull();
  });

  test('100,000 random and mutated packets, then it still answers correctly', async () => {
    const sock = await Bun.udpSocket({ socket: { data() {}, error() {} } });
    const seeds = [query('web.shop.svc.cluster.local'), query('db.shop.svc.cluster.local', 'SRV', { edns: 1232 }), query('example.test'), query('x.shop.pod.cluster.local', 'AAAA')];
    let rnd = 12345;
    const rand = () => ((rnd = (rnd * 1103515245 + 12345) & 0x7fffffff), rnd);
    for (let i = 0; i < 100_000; i++) {
      let pkt: Uint8Array;
      if (i % 3 === 0) {
        pkt = new Uint8Array(rand() % 600);
        for (let k = 0; k < pkt.length; k++) pkt[k] = rand() & 0xff;
      } else {
        pkt = new Uint8Array(seeds[i % seeds.length]!);
        for (let k = 0, n = 1 + (rand() % 4); k < n; k++) pkt[rand() % pkt.length] = rand() & 0xff;
        if (i % 7 === 0) pkt = pkt.slice(0, rand() % pkt.length);
      }
      sock.send(pkt, port, '127.0.0.1');
      if (i % 500 === 0) await Bun.sleep(1); // let the server breathe; drops in the kernel are fine
    }
    sock.close();
    await Bun.sleep(300);
    expect(agent.proc.exitCode).toBeNull();
    const r = await ask(port, 'web.shop.svc.cluster.local');
    expect(r.answers!.map((a) => a.data)).toEqual(['10.96.0.10']);
    expect(agent.logs).not.toContain('please report');
  }, 120_000);

  test('/metrics exports the DNS counters as counters, with the queries seen so far', async () => {
    const m = (await getText(`${admin}/metrics`)).body;
    expect(m).toContain('# TYPE edgemesh_dns_queries_total counter');
    const zone = Number(/edgemesh_dns_queries_total\{outcome="zone"\} (\d+)/.exec(m)?.[1]);
    expect(zone).toBeGreaterThan(10);
    expect(Number(/edgemesh_dns_cache_hits_total (\d+)/.exec(m)?.[1])).toBeGreaterThan(0);
    expect(Number(/edgemesh_dns_queries_total\{outcome="formerr"\} (\d+)/.exec(m)?.[1])).toBeGreaterThan(0);
  });

  test('a catalog file edit shows in answers', async () => {
    writeFileSync(catalogPath, readFileSync(catalogPath, 'utf8') + `---
apiVersion: v1
kind: Service
metadata: { name: fresh, namespace: shop }
spec: { clusterIP: 10.96.0.77, ports: [{ port: 80 }] }
`);
    await waitFor(async () => (await ask(port, 'fresh.shop.svc.cluster.local')).answers?.[0]?.data === '10.96.0.77', 'fresh answer', 1500, 10);
  });
});

describe('EdgeDNS (in process)', () => {
  test('a catalog change is visible in answers within 100 ms', async () => {
    const logger = createMemoryLogger('warn');
    const catalog = new Catalog({ logger });
    const { config } = mergeConfig('agent', 'edge', { modules: { edgeDNS: { enable: true, listenAddress: '127.0.0.1', listenPort: await freePort(), resolvConf: '' } } });
    const dns = new DnsModule({ config, catalog, logger });
    await dns.start();
    try {
      const svc = (ip: string) => ({ namespace: 'default', name: 'api', type: 'ClusterIP' as const, clusterIPs: [ip], headless: false, externalIPs: [], loadBalancerIPs: [], ports: [], sessionAffinity: 'None' as const, sessionAffinityTimeout: 10800, labels: {}, proxied: true });
      catalog.upsert({ kind: 'services', value: svc('10.96.1.1') });
      await waitFor(async () => (await ask(dns.port, 'api.default.svc.cluster.local')).answers?.[0]?.data === '10.96.1.1', 'first');
      const t0 = performance.now();
      catalog.upsert({ kind: 'services', value: svc('10.96.1.2') });
      await waitFor(async () => (await ask(dns.port, 'api.default.svc.cluster.local')).answers?.[0]?.data === '10.96.1.2', 'changed', 1000, 1);
      expect(performance.now() - t0).toBeLessThan(100);
      // No upstream at all: outside names get SERVFAIL, and it says why once.
      expect((await ask(dns.port, 'example.test')).rcode).toBe('SERVFAIL');
      expect(logger.lines.join('\n')).toContain('no upstream DNS servers');
    } finally {
      await dns.stop();
    }
  });
});

describe('EdgeDNS options (in process)', () => {
  const svc = (ns: string, name: string, ip: string, labels: Record<string, string> = {}) => ({ namespace: ns, name, type: 'ClusterIP' as const, clusterIPs: [ip], headless: false, externalIPs: [], loadBalancerIPs: [], ports: [], sessionAffinity: 'None' as const, sessionAffinityTimeout: 10800, labels, proxied: true });

  test('rateLimit: a client sending faster than the limit gets only about the limit answered', async () => {
    const logger = createMemoryLogger('warn');
    const catalog = new Catalog({ logger });
    catalog.upsert({ kind: 'services', value: svc('default', 'a', '10.96.0.1') });
    const { config } = mergeConfig('agent', 'edge', { modules: { edgeDNS: { enable: true, listenAddress: '127.0.0.1', listenPort: await freePort(), resolvConf: '', rateLimit: 20 } } });
    const dns = new DnsModule({ config, catalog, logger });
    await dns.start();
    try {
      let answered = 0;
      const sock = await Bun.udpSocket({ socket: { data() { answered++; }, error() {} } });
      for (let i = 0; i < 200; i++) sock.send(query('a.default.svc.cluster.local'), dns.port, '127.0.0.1');
      await Bun.sleep(300);
      sock.close();
      expect(answered).toBeGreaterThanOrEqual(15);
      expect(answered).toBeLessThanOrEqual(30);
    } finally {
      await dns.stop();
    }
  });

  test('cacheDNS: cluster names are forwarded too; upstreams auto-detected from kube-system DNS services', async () => {
    const up = new FakeUpstream();
    await up.start();
    up.records.set('a.default.svc.cluster.local', [{ name: 'a.default.svc.cluster.local', type: 'A', ttl: 30, data: '10.96.9.9' }]);
    const logger = createMemoryLogger('warn');
    const catalog = new Catalog({ logger });
    catalog.upsert({ kind: 'services', value: svc('default', 'a', '10.96.0.1') });
    catalog.upsert({ kind: 'services', value: svc('kube-system', 'kube-dns', '10.96.0.10') });
    catalog.upsert({ kind: 'services', value: svc('kube-system', 'other-dns', '10.96.0.11', { 'k8s-app': 'kube-dns' }) });
    await Bun.sleep(5);
    const base = { enable: true, listenAddress: '127.0.0.1', resolvConf: '' };
    const auto = new DnsModule({ config: mergeConfig('agent', 'edge', { modules: { edgeDNS: { ...base, listenPort: await freePort(), cacheDNS: { enable: true, upstreamServers: ['10.96.0.10', '192.0.2.53:5353'] } } } }).config, catalog, logger });
    expect(auto.upstreams().map((u) => `${u.host}:${u.port}`)).toEqual(['10.96.0.10:53', '10.96.0.11:53', '192.0.2.53:5353']);
    const dns = new DnsModule({ config: mergeConfig('agent', 'edge', { modules: { edgeDNS: { ...base, listenPort: await freePort(), cacheDNS: { enable: true, autoDetect: false, upstreamServers: [`127.0.0.1:${up.port}`], cacheTTL: 5 } } } }).config, catalog, logger });
    await dns.start();
    try {
      const r = await ask(dns.port, 'a.default.svc.cluster.local');
      expect(r.answers.map((a) => a.data)).toEqual(['10.96.9.9']); // the upstream's answer, not the catalog's
      const again = await ask(dns.port, 'a.default.svc.cluster.local');
      expect(again.answers[0]!.ttl).toBeLessThanOrEqual(5); // capped by cacheTTL
      expect(up.count('a.default.svc.cluster.local')).toBe(1);
    } finally {
      await dns.stop();
      await up.stop();
    }
  });
});

describe('EdgeDNS offline', () => {
  test('restarted while the Kubernetes API is down: cluster names still answer, from the snapshot', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: '10.96.0.10', ports: [{ port: 80 }] } });
    const port = await freePort();
    const cfg = await writeAgentConfig(t.path, `kubeAPIConfig: { master: ${api.url} }\nmodules:\n  edgeDNS: { enable: true, listenAddress: 127.0.0.1, listenPort: ${port}, resolvConf: "" }\n`);
    let agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'edge-1']);
    try {
      await waitFor(async () => (await ask(port, 'web.shop.svc.cluster.local')).answers[0]?.data === '10.96.0.10', 'online answer');
      await Bun.sleep(1500); // let the debounced snapshot reach the disk
      expect(await agent.stop()).toBe(0);
      await api.stop();
      agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'edge-1']);
      await waitFor(async () => (await ask(port, 'web.shop.svc.cluster.local')).answers[0]?.data === '10.96.0.10', 'offline answer', 10_000);
      expect((await getText(`${cfg.admin}/readyz`)).body).toContain('serving the catalog snapshot');
    } finally {
      await agent.stop();
      await api.stop();
      t.cleanup();
    }
  });
});
