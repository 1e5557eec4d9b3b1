/**
 * Scenarios of `edgemesh bench` on this node with nothing but the binary, each figure against a baseline measured
 * in the same run (the machine may be busy: compare ratios, not absolutes):
 * - proxy: TCP (bulk, round trips), HTTP (keep-alive, new connection per request) and UDP through proxied service
 *   ports vs the same servers directly, with the shipped bulk path (the splice(2) worker) as the agent runs it;
 * - dns: query rate and latency of the DNS server (1,000 services) vs a bare UDP echo server on the same event
 *   loop, the floor for any UDP service on this runtime;
 * - tunnel: two tunnel nodes in this process (PSK on), a service port whose endpoint is on the other one;
 * - ciphers: the engines' raw speed (libsodium through bun:ffi against the pure-JS fallback).
 * Everything listens on 127.0.0.1 and stops by itself. Client, servers and proxy share this one process (and
 * its event loop), so the ratios are a self-check of this node's runtime, pessimistic for the proxy; the
 * deployment figures against haproxy and dnsmasq come from bench/proxy-*.ts and bench/dns.ts.
 */
import { Catalog } from '../src/catalog/catalog.ts';
import { Zone } from '../src/dns/zone.ts';
import { DnsServer } from '../src/dns/server.ts';
import { Forwarder } from '../src/dns/forwarder.ts';
import { Balancer } from '../src/lb/balancer.ts';
import { createLogger } from '../src/obs/logger.ts';
import { TcpServicePort } from '../src/proxy/tcp.ts';
import { UdpServicePort } from '../src/proxy/udp.ts';
import { BulkSplicer } from '../src/proxy/splicer.ts';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { emptyObjects } from '../src/catalog/model.ts';
import { defaultConfig } from '../src/config/load.ts';
import { ADDRESSES_ANNOTATION, PEER_ID_ANNOTATION, TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { syntheticObjects } from './catalog.ts';
import { bulk, echoServer, httpLoad, httpServer, roundTrips, udpEcho, udpLoad } from './load.ts';
import { percentile } from './report.ts';
import type { BenchContext, RawFigure, Scenario } from './scenario.ts';

const logger = createLogger('bench', { level: 'error' });

const balancerFor = (port: number, nodeName = '') => {
  const b = new Balancer({ ring: { partitionCount: 100, replicationFactor: 10, load: 1.25 } });
  b.setEndpoints([{ key: `127.0.0.1:${port}`, ip: '127.0.0.1', port, nodeName, podName: '' }]);
  return b;
};

/** Bulk echo and round trips to the echo server, direct and through `viaPort` (same run). */
async function tcpFigures(ctx: BenchContext, prefix: string, label: string, directPort: number, viaPort: number): Promise<RawFigure[]> {
  const warm = Math.min(0.3, ctx.duration / 2);
  await bulk(directPort, warm);
  await bulk(viaPort, warm);
  ctx.progress('bulk echo, direct');
  const direct = await bulk(directPort, ctx.duration, (r) => ctx.progress('bulk echo, direct', `${r.toFixed(0)} MB/s`));
  ctx.progress(`bulk echo through the ${label}`);
  const via = await bulk(viaPort, ctx.duration, (r) => ctx.progress(`bulk echo through the ${label}`, `${r.toFixed(0)} MB/s`));
  ctx.progress(`${ctx.size}-byte round trips, direct`);
  const ld = await roundTrips(directPort, ctx.duration, ctx.size);
  ctx.progress(`${ctx.size}-byte round trips through the ${label}`);
  const lv = await roundTrips(viaPort, ctx.duration, ctx.size);
  const base = { label: 'direct' };
  return [
    { id: `${prefix}.bulk`, label: `bulk echo through the ${label}`, unit: 'MB/s', better: 'higher', value: via.mbps, baseline: { ...base, value: direct.mbps }, series: via.series },
    { id: `${prefix}.rtt.p50`, label: `${ctx.size}-byte round trip p50`, unit: 'µs', better: 'lower', value: percentile(lv, 50), baseline: { ...base, value: percentile(ld, 50) }, latencies: lv },
    { id: `${prefix}.rtt.p99`, label: `${ctx.size}-byte round trip p99`, unit: 'µs', better: 'lower', value: percentile(lv, 99), baseline: { ...base, value: percentile(ld, 99) } },
    { id: `${prefix}.rtt.p999`, label: `${ctx.size}-byte round trip p99.9`, unit: 'µs', better: 'lower', value: percentile(lv, 99.9), baseline: { ...base, value: percentile(ld, 99.9) } },
  ];
}

export const proxyScenario: Scenario = {
  id: 'proxy',
  description: 'TCP, HTTP and UDP through proxied service ports vs the same servers directly, all in this process',
  async run(ctx) {
    const echo = echoServer();
    const http = httpServer();
    const uecho = await udpEcho();
    // As the agent runs it (the default edgeProxy.spliceBulkBytes and the splicer's own defaults).
    const cfg = defaultConfig('agent', 'edge').modules.edgeProxy;
    const splicer = new BulkSplicer({ logger, idleTimeoutSec: 0 });
    const spliceOn = cfg.spliceBulkBytes > 0 && (await splicer.start());
    ctx.fact('bulk path', spliceOn ? 'splice(2) worker' : 'JavaScript (the splice worker is not available here)');
    const port = (p: number) => new TcpServicePort({ host: '127.0.0.1', port: 0, balancer: balancerFor(p), logger, isLocal: () => true, connectTimeoutMs: 2000, idleTimeoutSec: 0, maxAttempts: 1, splicer: spliceOn ? splicer : undefined, bulkBytes: cfg.spliceBulkBytes });
    const tcp = port(echo.port);
    const web = port(http.port);
    const udp = new UdpServicePort({ host: '127.0.0.1', port: 0, balancer: balancerFor(uecho.port), logger, isLocal: () => true, idleTimeoutMs: 60_000, maxSessions: 1000 });
    tcp.start();
    web.start();
    await udp.start();
    try {
      const out = await tcpFigures(ctx, 'proxy.tcp', 'proxy', echo.port, tcp.port);
      for (const keepAlive of [true, false]) {
        const kind = keepAlive ? 'keep-alive' : 'new connection per request';
        const run = (p: number, where: string) => httpLoad(p, ctx.duration, ctx.connections, keepAlive, (r) => ctx.progress(`HTTP ${kind}, ${where}`, `${r.toFixed(0)} req/s`));
        const direct = await run(http.port, 'direct');
        const via = await run(web.port, 'through the proxy');
        out.push({ id: `proxy.http.${keepAlive ? 'keepalive' : 'newconn'}`, label: `HTTP ${kind}, ${ctx.connections} connections`, unit: 'req/s', better: 'higher', value: via, baseline: { label: 'direct', value: direct } });
      }
      const datagrams = Array.from({ length: 16 }, () => new Uint8Array(Math.max(2, ctx.size)));
      ctx.progress('UDP echo, direct');
      const ud = await udpLoad(uecho.port, datagrams, ctx.duration, 32);
      ctx.progress('UDP echo through the proxy');
      const uv = await udpLoad(udp.port, datagrams, ctx.duration, 32);
      out.push(
        { id: 'proxy.udp.rate', label: `UDP ${ctx.size}-byte datagrams echoed, 32 outstanding`, unit: 'datagrams/s', better: 'higher', value: uv.qps, baseline: { label: 'direct', value: ud.qps } },
        { id: 'proxy.udp.p50', label: 'UDP round trip p50', unit: 'µs', better: 'lower', value: percentile(uv.lat, 50), baseline: { label: 'direct', value: percentile(ud.lat, 50) }, latencies: uv.lat },
      );
      return out;
    } finally {
      tcp.stop();
      web.stop();
      udp.stop();
      await splicer.stop();
      echo.stop(true);
      http.stop(true);
      uecho.close();
    }
  },
};

export const dnsScenario: Scenario = {
  id: 'dns',
  description: 'DNS answers for 1,000 services vs a bare UDP echo server, all in this process: queries/s and latency',
  async run(ctx) {
    const catalog = new Catalog({ logger });
    catalog.replace(syntheticObjects(1000), 'file');
    catalog.flush();
    const zone = new Zone('cluster.local', 30);
    zone.rebuild(catalog.snapshot());
    const forwarder = new Forwarder({ upstreams: () => [], logger, timeoutMs: 500, cacheSize: 100, maxNegativeTTL: 5 });
    const dns = new DnsServer({ host: '127.0.0.1', port: 0, logger, zone: () => zone, forwarder, forwardAll: false, tcpIdleTimeoutSec: 5, rateLimit: 0 });
    await dns.start();
    const echo = await udpEcho();
    try {
      const dnsPacket = (await import('dns-packet')).default;
      const queries = Array.from({ length: 1000 }, (_, i) => new Uint8Array(dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: `svc-${i}.ns${i % 50}.svc.cluster.local`, type: 'A', class: 'IN' }] })));
      const warm = Math.min(0.3, ctx.duration / 2);
      await udpLoad(dns.port, queries, warm, 64);
      await udpLoad(echo.port, queries, warm, 64);
      ctx.progress('UDP echo baseline');
      const base = await udpLoad(echo.port, queries, ctx.duration, 64);
      ctx.progress('DNS queries', `${base.qps.toFixed(0)} q/s baseline`);
      const ours = await udpLoad(dns.port, queries, ctx.duration, 64);
      const b = { label: 'UDP echo' };
      return [
        { id: 'dns.qps', label: 'queries/s (64 outstanding, one client)', unit: 'queries/s', better: 'higher', value: ours.qps, baseline: { ...b, value: base.qps } },
        { id: 'dns.latency.p50', label: 'latency p50', unit: 'µs', better: 'lower', value: percentile(ours.lat, 50), baseline: { ...b, value: percentile(base.lat, 50) }, latencies: ours.lat },
        { id: 'dns.latency.p99', label: 'latency p99', unit: 'µs', better: 'lower', value: percentile(ours.lat, 99), baseline: { ...b, value: percentile(base.lat, 99) } },
      ];
    } finally {
      echo.close();
      await dns.stop();
      await forwarder.stop();
    }
  },
};

/**
 * The tunnel as this node would run it: two tunnel nodes in this process on loopback (PSK on, the engines this
 * host selects), a proxy port whose endpoint is on the other node. One core does both ends, so a real pair of
 * nodes does better.
 */
export const tunnelScenario: Scenario = {
  id: 'tunnel',
  description: 'TCP through the libp2p tunnel (two nodes in this process, PSK on) vs direct: bulk and round trips',
  async run(ctx) {
    const echo = echoServer();
    const keys = [await generateKeyPair('Ed25519'), await generateKeyPair('Ed25519')];
    const ports = await Promise.all([0, 1].map(async () => {
      const l = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } });
      const p = l.port;
      l.stop(true);
      return p;
    }));
    const objs = emptyObjects();
    ['a', 'b'].forEach((name, i) => objs.nodes.push({
      name, addresses: [], podCIDRs: [], labels: {},
      annotations: { [PEER_ID_ANNOTATION]: peerIdFromPrivateKey(keys[i]!).toString(), [ADDRESSES_ANNOTATION]: `/ip4/127.0.0.1/tcp/${ports[i]}` },
    }));
    objs.endpoints.push({ namespace: 'bench', name: 'echo', from: 'Endpoints', endpoints: [{ ip: '127.0.0.1', nodeName: 'b', podName: '', hostname: '', ready: true, ports: [{ name: '', port: echo.port, protocol: 'TCP' }] }] });
    const psk = crypto.getRandomValues(new Uint8Array(32));
    applyLibraryPatches(logger); // as the agent does before its tunnel starts
    const nodes = ['a', 'b'].map((name, i) => {
      const catalog = new Catalog({ logger });
      catalog.replace(structuredClone(objs), 'file');
      catalog.flush();
      const config = { ...defaultConfig('agent', 'edge').modules.edgeTunnel, enable: true, listenPort: ports[i]!, listenInterfaces: 'lo', mdns: false, directHostEndpoints: false };
      return new TunnelModule({ config, nodeName: name, catalog, privateKey: keys[i]!, psk, logger });
    });
    const proxy = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer: balancerFor(echo.port, 'b'), logger, isLocal: () => false, remote: nodes[0], connectTimeoutMs: 5000, idleTimeoutSec: 0, maxAttempts: 1 });
    try {
      ctx.progress('starting two tunnel nodes');
      for (const n of nodes) await n.start();
      proxy.start();
      ctx.fact('encryption', nodes[0]!.describe().encryption);
      return await tcpFigures(ctx, 'tunnel.tcp', 'tunnel', echo.port, proxy.port);
    } finally {
      proxy.stop();
      for (const n of nodes) await n.stop();
      echo.stop(true);
    }
  },
};

/** MB/s of `f` over 64 KiB messages for `seconds`. */
function throughput(seconds: number, f: (m: Uint8Array, i: number) => void): number {
  const msg = new Uint8Array(64 * 1024);
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let bytes = 0;
  for (let i = 0; performance.now() < end; i++) {
    f(msg, i);
    bytes += msg.length;
  }
  return bytes / 1e6 / ((performance.now() - t0) / 1000);
}

export const cipherScenario: Scenario = {
  id: 'ciphers',
  description: 'the tunnel\'s cipher engines, raw: libsodium through bun:ffi vs the pure-JS fallback, MB/s',
  async unavailable() {
    const { sodium } = await import('../src/tunnel/security/cipher.ts');
    const s = sodium();
    return 'error' in s ? `libsodium is not loadable here (${s.error}): the tunnel runs its pure-JS engines; install libsodium23 for the fast ones` : null;
  },
  async run(ctx) {
    const { sodium } = await import('../src/tunnel/security/cipher.ts');
    const { xsalsa20 } = await import('@noble/ciphers/salsa.js');
    const { chacha20poly1305 } = await import('@noble/ciphers/chacha.js');
    const s = sodium();
    if ('error' in s) throw new Error(s.error);
    const key = crypto.getRandomValues(new Uint8Array(32));
    const nonce24 = crypto.getRandomValues(new Uint8Array(24));
    const nonce12 = crypto.getRandomValues(new Uint8Array(12));
    const out = new Uint8Array(64 * 1024 + 16);
    const d = Math.max(0.1, ctx.duration / 2);
    ctx.progress('XSalsa20 (the PSK stream)');
    const sx = throughput(d, (m) => s.lib.crypto_stream_xsalsa20_xor_ic(out, m, m.length, nonce24, 0, key));
    const nx = throughput(d, (m) => xsalsa20(key, nonce24, m));
    ctx.progress('ChaCha20-Poly1305 (Noise)');
    const sc = throughput(d, (m) => s.lib.crypto_aead_chacha20poly1305_ietf_encrypt(out, null, m, m.length, null, 0, null, nonce12, key));
    const nc = throughput(d, (m) => chacha20poly1305(key, nonce12).encrypt(m));
    const b = { label: 'pure JS (@noble/ciphers)' };
    return [
      { id: 'cipher.xsalsa20', label: 'XSalsa20, libsodium', unit: 'MB/s', better: 'higher', value: sx, baseline: { ...b, value: nx } },
      { id: 'cipher.chacha20poly1305', label: 'ChaCha20-Poly1305, libsodium', unit: 'MB/s', better: 'higher', value: sc, baseline: { ...b, value: nc } },
    ];
  },
};
