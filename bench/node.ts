/**
 * `edgemesh bench proxy` and `edgemesh bench dns`: profile this node with nothing but the binary, each against a
 * baseline measured in the same run (the machine may be busy: compare ratios, not absolutes).
 * - proxy: bulk throughput and small request/response latency through a TcpServicePort vs a direct connection
 *   to the same local echo server, with the shipped bulk path (splice(2) worker) as the agent runs it;
 * - dns: query rate and latency of the DNS server (1,000 services) vs a bare UDP echo server on the same event
 *   loop, the floor for any UDP service on this runtime.
 * Everything listens on 127.0.0.1 and stops by itself. Client, server and proxy share this one process (and
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
import { BulkSplicer } from '../src/proxy/splicer.ts';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { emptyObjects } from '../src/catalog/model.ts';
import { defaultConfig } from '../src/config/load.ts';
import { ADDRESSES_ANNOTATION, PEER_ID_ANNOTATION, TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { syntheticObjects } from './catalog.ts';
import type { Scenario } from './scenario.ts';

const logger = createLogger('bench', { level: 'error' });
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

/** An echo server with real backpressure: what the socket does not take now waits, and reading pauses. */
function echoServer(): Bun.TCPSocketListener<{ rest: Uint8Array | null }> {
  return Bun.listen<{ rest: Uint8Array | null }>({
    hostname: '127.0.0.1',
    port: 0,
    socket: {
      open(s) {
        s.data = { rest: null };
      },
      data(s, d) {
        const n = s.write(d);
        if (n < d.length) {
          s.data.rest = d.subarray(Math.max(0, n));
          s.pause();
        }
      },
      drain(s) {
        const r = s.data.rest;
        if (!r) return;
        const n = s.write(r);
        if (n < r.length) {
          s.data.rest = r.subarray(Math.max(0, n));
          return;
        }
        s.data.rest = null;
        s.resume();
      },
    },
  });
}

/** Send `bytes` as fast as the socket takes them and count what is echoed back; MB/s. */
async function bulk(port: number, bytes: number): Promise<number> {
  const chunk = new Uint8Array(256 * 1024);
  let sent = 0;
  let got = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const pump = (s: { write(b: Uint8Array): number }) => {
      while (sent < bytes) {
        const n = s.write(chunk);
        if (n > 0) sent += n;
        if (n < chunk.length) return;
      }
    };
    void Bun.connect({ hostname: '127.0.0.1', port, socket: {
      open: pump,
      drain: pump,
      data(s, d) {
        got += d.length;
        if (got >= bytes) {
          s.end();
          resolve();
        }
      },
    } });
  });
  return bytes / 1e6 / ((performance.now() - t0) / 1000);
}

/** Sequential 64-byte round trips on one connection; latencies in µs. */
async function pingPong(port: number, n: number): Promise<number[]> {
  const lat: number[] = [];
  const msg = new Uint8Array(64);
  await new Promise<void>((resolve) => {
    let t = 0;
    let got = 0;
    void Bun.connect({ hostname: '127.0.0.1', port, socket: {
      open(s) {
        t = performance.now();
        s.write(msg);
      },
      data(s, d) {
        got += d.length;
        if (got < 64) return;
        got = 0;
        lat.push((performance.now() - t) * 1000);
        if (lat.length >= n) {
          s.end();
          resolve();
          return;
        }
        t = performance.now();
        s.write(msg);
      },
    } });
  });
  return lat;
}

/**
 * Bulk echo MB/s and 64-byte round trips to the echo server, direct and through `via` (the same run), as rows and
 * a table with ratios to direct.
 */
async function compareEcho(progress: (l: string) => void, directPort: number, viaPort: number, label: string, mib: number, trips: number) {
  await bulk(directPort, 16 * 1024 * 1024); // warm-up
  await bulk(viaPort, 16 * 1024 * 1024);
  const direct = await bulk(directPort, mib * 1024 * 1024);
  progress(`bulk direct: ${direct.toFixed(0)} MB/s`);
  const via = await bulk(viaPort, mib * 1024 * 1024);
  progress(`bulk through the ${label}: ${via.toFixed(0)} MB/s`);
  const ld = await pingPong(directPort, trips);
  const lv = await pingPong(viaPort, trips);
  const rows = [
    { metric: `bulk echo (MB/s, ${mib} MiB each way)`, direct: +direct.toFixed(0), [label]: +via.toFixed(0), ratio: +(via / direct).toFixed(3) },
    { metric: 'round trip p50 (µs)', direct: +pct(ld, 50).toFixed(1), [label]: +pct(lv, 50).toFixed(1), ratio: +(pct(lv, 50) / pct(ld, 50)).toFixed(2) },
    { metric: 'round trip p99 (µs)', direct: +pct(ld, 99).toFixed(1), [label]: +pct(lv, 99).toFixed(1), ratio: +(pct(lv, 99) / pct(ld, 99)).toFixed(2) },
  ];
  const table = [`| metric | direct | through the ${label} | ratio |`, '|---|---:|---:|---:|', ...rows.map((r) => `| ${r.metric} | ${r.direct} | ${r[label]} | ${r.ratio} |`)].join('\n');
  return { table, rows };
}

export const proxyScenario: Scenario = {
  name: 'proxy',
  description: 'TCP through a proxied service port vs direct, all in this process: bulk MB/s and 64-byte round trips',
  async run(progress) {
    const echo = echoServer();
    const balancer = new Balancer({ ring: { partitionCount: 100, replicationFactor: 10, load: 1.25 } });
    balancer.setEndpoints([{ key: `127.0.0.1:${echo.port}`, ip: '127.0.0.1', port: echo.port, nodeName: '', podName: '' }]);
    // As the agent runs it (the default edgeProxy.spliceBulkBytes and the splicer's own defaults).
    const cfg = defaultConfig('agent', 'edge').modules.edgeProxy;
    const splicer = new BulkSplicer({ logger, idleTimeoutSec: 0 });
    const spliceOn = cfg.spliceBulkBytes > 0 && (await splicer.start());
    progress(spliceOn ? 'bulk path: splice(2) worker' : 'bulk path: JavaScript (the splice worker is not available here)');
    const proxy = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer, logger, isLocal: () => true, connectTimeoutMs: 2000, idleTimeoutSec: 0, maxAttempts: 1, splicer: spliceOn ? splicer : undefined, bulkBytes: cfg.spliceBulkBytes });
    proxy.start();
    try {
      return await compareEcho(progress, echo.port, proxy.port, 'proxy', 512, 20_000);
    } finally {
      proxy.stop();
      await splicer.stop();
      echo.stop(true);
    }
  },
};

/** Fire `total` queries with `window` outstanding from one socket; QPS and latencies (µs). */
async function udpLoad(port: number, queries: Uint8Array[], total: number, window: number): Promise<{ qps: number; lat: number[] }> {
  const sentAt = new Float64Array(65536);
  const lat: number[] = [];
  let next = 0;
  let done = 0;
  let finish: () => void = () => {};
  const finished = new Promise<void>((r) => (finish = r));
  const send = (s: { send(b: Uint8Array, p: number, a: string): boolean }) => {
    const q = queries[next % queries.length]!;
    const id = next & 0xffff;
    q[0] = id >> 8;
    q[1] = id & 0xff;
    sentAt[id] = performance.now();
    next++;
    s.send(q, port, '127.0.0.1');
  };
  const sock = await Bun.udpSocket({ hostname: '127.0.0.1', socket: {
    data(s, b) {
      const id = (b[0]! << 8) | b[1]!;
      lat.push((performance.now() - sentAt[id]!) * 1000);
      done++;
      if (done >= total) finish();
      else if (next < total) send(s);
    },
    error() {},
  } });
  const t0 = performance.now();
  for (let i = 0; i < window; i++) send(sock);
  // Lost datagrams (a full kernel buffer) would stall the window: top it up if nothing came back for a while.
  const guard = setInterval(() => { if (next < total) for (let i = 0; i < window / 4; i++) send(sock); else finish(); }, 200);
  await finished;
  clearInterval(guard);
  const secs = (performance.now() - t0) / 1000;
  sock.close();
  return { qps: done / secs, lat };
}

export const dnsScenario: Scenario = {
  name: 'dns',
  description: 'DNS answers for 1,000 services vs a bare UDP echo server, all in this process: queries/s and latency',
  async run(progress) {
    const catalog = new Catalog({ logger });
    catalog.replace(syntheticObjects(1000), 'file');
    catalog.flush();
    const zone = new Zone('cluster.local', 30);
    zone.rebuild(catalog.snapshot());
    const forwarder = new Forwarder({ upstreams: () => [], logger, timeoutMs: 500, cacheSize: 100, maxNegativeTTL: 5 });
    const dns = new DnsServer({ host: '127.0.0.1', port: 0, logger, zone: () => zone, forwarder, forwardAll: false, tcpIdleTimeoutSec: 5, rateLimit: 0 });
    await dns.start();
    const echo = await Bun.udpSocket({ hostname: '127.0.0.1', socket: { data(s, b, p, a) { s.send(b, p, a); }, error() {} } });
    try {
      const dnsPacket = (await import('dns-packet')).default;
      const queries = Array.from({ length: 1000 }, (_, i) => new Uint8Array(dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: `svc-${i}.ns${i % 50}.svc.cluster.local`, type: 'A', class: 'IN' }] })));
      await udpLoad(dns.port, queries, 20_000, 64); // warm-up
      await udpLoad(echo.port, queries, 20_000, 64);
      const base = await udpLoad(echo.port, queries, 200_000, 64);
      progress(`UDP echo baseline: ${base.qps.toFixed(0)} queries/s`);
      const ours = await udpLoad(dns.port, queries, 200_000, 64);
      progress(`DNS: ${ours.qps.toFixed(0)} queries/s`);
      const rows = [
        { metric: 'queries/s (64 outstanding, one client)', baseline: +base.qps.toFixed(0), dns: +ours.qps.toFixed(0), ratio: +(ours.qps / base.qps).toFixed(2) },
        { metric: 'latency p50 (µs)', baseline: +pct(base.lat, 50).toFixed(1), dns: +pct(ours.lat, 50).toFixed(1), ratio: +(pct(ours.lat, 50) / pct(base.lat, 50)).toFixed(2) },
        { metric: 'latency p99 (µs)', baseline: +pct(base.lat, 99).toFixed(1), dns: +pct(ours.lat, 99).toFixed(1), ratio: +(pct(ours.lat, 99) / pct(base.lat, 99)).toFixed(2) },
      ];
      const table = ['| metric | UDP echo | DNS | ratio |', '|---|---:|---:|---:|', ...rows.map((r) => `| ${r.metric} | ${r.baseline} | ${r.dns} | ${r.ratio} |`)].join('\n');
      return { table, rows };
    } finally {
      echo.close();
      await dns.stop();
      await forwarder.stop();
    }
  },
};

/**
 * The tunnel as this node would run it: two tunnel nodes in this process on loopback (PSK on, the engines this
 * host selects), a proxy port whose endpoint is on the other node. Bulk MB/s and 64-byte round trips against a
 * direct connection to the same echo server; one core does both ends, so a real pair of nodes does better.
 */
export const tunnelScenario: Scenario = {
  name: 'tunnel',
  description: 'TCP through the libp2p tunnel (two nodes in this process, PSK on) vs direct: bulk MB/s and round trips',
  async run(progress) {
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
    const balancer = new Balancer({ ring: { partitionCount: 100, replicationFactor: 10, load: 1.25 } });
    balancer.setEndpoints([{ key: `127.0.0.1:${echo.port}`, ip: '127.0.0.1', port: echo.port, nodeName: 'b', podName: '' }]);
    const proxy = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer, logger, isLocal: () => false, remote: nodes[0], connectTimeoutMs: 5000, idleTimeoutSec: 0, maxAttempts: 1 });
    try {
      for (const n of nodes) await n.start();
      proxy.start();
      progress(`tunnel encryption: ${nodes[0]!.describe().encryption}`);
      return await compareEcho(progress, echo.port, proxy.port, 'tunnel', 256, 5_000);
    } finally {
      proxy.stop();
      for (const n of nodes) await n.stop();
      echo.stop(true);
    }
  },
};
