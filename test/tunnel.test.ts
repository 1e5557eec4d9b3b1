/**
 * The tunnel end to end: two agent processes on loopback ("a" and "b"), each with its own identity, a shared
 * catalog file binding their node names to their peer IDs, the PSK on. A client of a's proxy reaches a service
 * whose endpoint is on node b: a's proxy → tunnel stream → b's agent → the backend.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { createHash, randomBytes } from 'node:crypto';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Socket, connect } from 'node:net';
import { multiaddr } from '@multiformats/multiaddr';
import { Catalog } from '../src/catalog/catalog.ts';
import { FileSource } from '../src/catalog/sources/file.ts';
import { defaultConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { lengthPrefixed } from '../src/tunnel/protocol.ts';
import { derivePsk } from '../src/tunnel/psk.ts';
import { AgentProcess, freePort, freeStablePort, getJson, getText, runCli, tempDir, waitFor, writeAgentConfig, writer } from './helpers.ts';

interface Node {
  name: string;
  config?: string;
  dir: string;
  stateDir: string;
  peerId: string;
  port: number;
  admin: string;
  agent: AgentProcess | null;
}

let sinkConnections = 0;

/** A TCP backend: "sink" answers, on FIN, the byte count and SHA-256 of what it got; "source:N" sends N random bytes and their hash. */
function sinkServer() {
  return Bun.listen<{ n: number; h: ReturnType<typeof createHash> }>({
    hostname: '127.0.0.1',
    port: 0,
    allowHalfOpen: true,
    socket: {
      binaryType: 'uint8array',
      open(s) {
        sinkConnections++;
        s.data = { n: 0, h: createHash('sha256') };
      },
      data(s, d) {
        s.data.n += d.length;
        s.data.h.update(d);
      },
      end(s) {
        s.end(`${s.data.n} ${s.data.h.digest('hex')}`);
      },
    },
  });
}

/**
 * A backend that answers "bye" and ends its side at once, then reads nothing for `delayMs` through a tiny receive
 * buffer (Bun cannot set SO_RCVBUF, Python can), then reads everything and prints the byte count: the receiving
 * agent has to hold what the client sent while its session may already carry the next connection's CONNECT.
 */
async function slowReader(delayMs: number): Promise<{ port: number; counts: number[]; stop(): void }> {
  const code = `
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
srv.bind(("127.0.0.1", 0)); srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    c.sendall(b"bye"); c.shutdown(socket.SHUT_WR)
    time.sleep(${delayMs / 1000})
    n = 0
    while True:
        d = c.recv(65536)
        if not d: break
        n += len(d)
    print(n, flush=True)
    c.close()
`;
  const p = Bun.spawn(['python3', '-c', code], { stdout: 'pipe', stderr: 'inherit' });
  const counts: number[] = [];
  let port = 0;
  void (async () => {
    let buf = '';
    for await (const chunk of p.stdout) {
      buf += Buffer.from(chunk).toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const v = Number(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (!port) port = v;
        else counts.push(v);
      }
    }
  })();
  await waitFor(() => port || null, 'the slow reader listening');
  return { port, counts, stop: () => p.kill() };
}

/** Speaks first ("hello\n" on connect), then echoes: a server-first protocol such as SSH or SMTP. */
function bannerServer() {
  return Bun.listen({
    hostname: '127.0.0.1',
    port: 0,
    socket: {
      binaryType: 'uint8array',
      open(s) {
        s.write('hello\n');
      },
      data(s, d) {
        s.write(d.slice());
      },
    },
  });
}

/** Accepts and resets at once: the reset reaches the tunnel right behind its SUCCESS. */
function resetter() {
  return Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { open(s) { s.terminate(); }, data() {} } });
}

function echoServer() {
  return Bun.listen<{ rest: Uint8Array[] }>({
    hostname: '127.0.0.1',
    port: 0,
    allowHalfOpen: true,
    socket: {
      binaryType: 'uint8array',
      open(s) {
        s.data = { rest: [] };
      },
      data(s, d) {
        if (s.data.rest.length) {
          s.data.rest.push(d.slice());
          return;
        }
        const n = s.write(d);
        if (n < d.length) {
          s.data.rest.push(d.slice(Math.max(0, n)));
          s.pause();
        }
      },
      drain(s) {
        const q = s.data.rest;
        while (q.length) {
          const n = s.write(q[0]!);
          if (n < q[0]!.length) {
            q[0] = q[0]!.subarray(Math.max(0, n));
            return;
          }
          q.shift();
        }
        s.resume();
      },
      end(s) {
        if (!s.data.rest.length) s.end();
      },
    },
  });
}

/** Write sizes that vary the way real clients do (the stock pnet cipher broke only under some patterns). */
const WRITE_SIZES = [262144, 1460, 65536, 17, 1048576, 4096, 131072, 9000];

/** Send `total` random bytes in writes of varied sizes (with backpressure), FIN, and return the reply. */
function upload(port: number, total: number): Promise<{ sent: string; reply: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    const block = randomBytes(1048576);
    let sent = 0;
    let i = 0;
    let reply = '';
    const t0 = performance.now();
    const pump = writer(
      () => (sent < total ? block.subarray(0, Math.min(WRITE_SIZES[i % WRITE_SIZES.length]!, total - sent)) : null),
      (part, whole) => {
        h.update(part);
        sent += part.length;
        if (whole) i++;
      },
    );
    void Bun.connect({
      hostname: '127.0.0.1',
      port,
      allowHalfOpen: true,
      socket: {
        open: pump,
        drain: pump,
        data(_s, d) {
          reply += Buffer.from(d).toString();
        },
        close(_s, err) {
          if (err) reject(err);
          else resolve({ sent: `${sent} ${h.digest('hex')}`, reply, ms: performance.now() - t0 });
        },
        error(_s, e) {
          reject(e);
        },
      },
    }).catch(reject);
  });
}

/** Send all of `payload` (with backpressure), then FIN; resolve with the reply once both sides have closed. */
function sendAndRead(port: number, payload: Uint8Array): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    let off = 0;
    const pump = writer(() => (off < payload.length ? payload.subarray(off) : null), (part) => (off += part.length));
    Bun.connect({
      hostname: '127.0.0.1', port, allowHalfOpen: true,
      socket: {
        open: pump,
        drain: pump,
        data(_s, d) { text += Buffer.from(d).toString(); },
        // Both sides have sent FIN: Bun reports that as close, not always as end first.
        end(s) { s.end(); },
        close() { resolve(text); },
        error(_s, e) { reject(e); },
      },
    }).catch(reject);
  });
}

/** Send one message, read back the same number of bytes. */
function echoOnce(port: number, msg: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    void Bun.connect({
      hostname: '127.0.0.1',
      port,
      socket: {
        open(s) {
          s.write(msg);
        },
        data(s, d) {
          parts.push(Buffer.from(d));
          got += d.length;
          if (got >= msg.length) {
            s.end();
            resolve(Buffer.concat(parts));
          }
        },
        close() {
          if (got < msg.length) reject(new Error(`closed after ${got} of ${msg.length} bytes`));
        },
        error(_s, e) {
          reject(e);
        },
      },
    }).catch(reject);
  });
}

function catalogYaml(nodes: Node[], extra: { node: string; ip: string; port: number; protocol: 'TCP' | 'UDP'; name: string; clusterIP: string; more?: { ip: string; port: number }[] }[]): string {
  const docs: string[] = [];
  for (const n of nodes) {
    docs.push(`apiVersion: v1
kind: Node
metadata:
  name: ${n.name}
  annotations:
    edgemesh.io/peer-id: ${n.peerId}
    edgemesh.io/tunnel-addresses: /ip4/127.0.0.1/tcp/${n.port}
status:
  addresses: [{ type: InternalIP, address: 127.0.0.${10 + nodes.indexOf(n)} }, { type: Hostname, address: localhost }]`);
  }
  for (const s of extra) {
    docs.push(`apiVersion: v1
kind: Service
metadata: { name: ${s.name}, namespace: default }
spec:
  clusterIP: ${s.clusterIP}
  ports: [{ name: p, port: 80, protocol: ${s.protocol} }]`);
    docs.push(`apiVersion: v1
kind: Endpoints
metadata: { name: ${s.name}, namespace: default }
subsets:
  - addresses: [{ ip: ${s.ip}, nodeName: ${s.node} }]
    ports: [{ name: p, port: ${s.port}, protocol: ${s.protocol} }]${(s.more ?? []).map((m) => `
  - addresses: [{ ip: ${m.ip}, nodeName: ${s.node} }]
    ports: [{ name: p, port: ${m.port}, protocol: ${s.protocol} }]`).join('')}`);
  }
  return docs.join('\n---\n') + '\n';
}

describe('tunnel between two agents on loopback (PSK on)', () => {
  const t = tempDir('edgemesh-tunnel-');
  const pskPath = join(t.path, 'psk');
  const catalogPath = join(t.path, 'catalog.yaml');
  const nodes: Node[] = [];
  const sink = sinkServer();
  const echo = echoServer();
  // Answers and ends first, reads late. In Python: a Bun server that calls end() with received bytes still unread
  // closes the connection with an error, and the client's first bytes now reach the backend with the CONNECT.
  let closer: Awaited<ReturnType<typeof slowReader>>;
  const reset = resetter();
  const banner = bannerServer();
  // Nothing listens on port 1 of loopback: a connect is refused. (A port from freePort() is released at once and
  // could be handed to a later listener or an agent's fixed source port.)
  const deadPort = 1;
  let slow: Awaited<ReturnType<typeof slowReader>>;
  let udpEcho: Bun.udp.Socket<'buffer'>;
  let thirdKey: PrivateKey;
  let thirdPort = 0;
  const services = () => [
    { name: 'sink', node: 'b', ip: '127.0.0.1', port: sink.port, protocol: 'TCP' as const, clusterIP: '10.96.1.1' },
    { name: 'echo', node: 'b', ip: '127.0.0.1', port: echo.port, protocol: 'TCP' as const, clusterIP: '10.96.1.2' },
    { name: 'uecho', node: 'b', ip: '127.0.0.1', port: udpEcho.port, protocol: 'UDP' as const, clusterIP: '10.96.1.3' },
    // A UDP endpoint nobody listens on: b's datagrams to it come back as ICMP port unreachable.
    { name: 'udead', node: 'b', ip: '127.0.0.1', port: deadPort, protocol: 'UDP' as const, clusterIP: '10.96.1.10' },
    { name: 'closer', node: 'b', ip: '127.0.0.1', port: closer.port, protocol: 'TCP' as const, clusterIP: '10.96.1.5' },
    { name: 'slow', node: 'b', ip: '127.0.0.1', port: slow.port, protocol: 'TCP' as const, clusterIP: '10.96.1.6' },
    { name: 'reset', node: 'b', ip: '127.0.0.1', port: reset.port, protocol: 'TCP' as const, clusterIP: '10.96.1.7' },
    { name: 'banner', node: 'b', ip: '127.0.0.1', port: banner.port, protocol: 'TCP' as const, clusterIP: '10.96.1.8' },
    // Two endpoints on b, one of them refusing: a connection's first bytes must survive a FAILED and a retry.
    { name: 'flaky', node: 'b', ip: '127.0.0.1', port: deadPort, protocol: 'TCP' as const, clusterIP: '10.96.1.9', more: [{ ip: '127.0.0.1', port: echo.port }] },
    // An endpoint on node a: b must not dial it for anyone.
    { name: 'elsewhere', node: 'a', ip: '127.0.0.2', port: sink.port, protocol: 'TCP' as const, clusterIP: '10.96.1.4' },
  ];

  // directHostEndpoints is off: on loopback every node has the same IP, so every endpoint would look like a
  // hostNetwork endpoint of its node and skip the tunnel (test/tunnel-mdns.test.ts covers that shortcut).
  async function startNode(n: Node, psk = pskPath): Promise<void> {
    const cfg = await writeAgentConfig(n.dir, `
catalog: { file: ${catalogPath} }
commonConfig: { stateDir: ${n.stateDir} }
modules:
  edgeProxy: { enable: true, listenAddress: 127.0.0.1, interception: none }
  edgeTunnel: { enable: true, listenPort: ${n.port}, listenInterfaces: lo, mdns: false, directHostEndpoints: false, psk: { path: ${psk} } }
`);
    n.admin = cfg.admin;
    n.config = cfg.path;
    n.agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', n.name]);
    await waitFor(async () => (await fetch(`${n.admin}/readyz`).catch(() => null))?.status === 200, () => `${n.name} ready\n${n.agent!.logs}`, 15_000);
  }

  /** Node a's count of proxied connections that took a pooled session. */
  const sessionReuses = async () => Number(/^edgemesh_tunnel_session_reuses_total (\d+)/m.exec(await (await fetch(`${nodes[0]!.admin}/metrics`)).text())?.[1] ?? NaN);

  async function proxyPort(n: Node, service: string): Promise<number> {
    const ports = await waitFor(async () => {
      const p = await getJson<{ service: string; listenPort: number; endpoints: number }[]>(`${n.admin}/debug/proxy`);
      return p.find((x) => x.service === service && x.endpoints > 0);
    }, `${service} on ${n.name}`);
    return ports.listenPort;
  }

  beforeAll(async () => {
    slow = await slowReader(1500);
    closer = await slowReader(300);
    // The error handler: a client that went away answers with ICMP, which Bun raises as an uncaught error without it.
    udpEcho = await Bun.udpSocket({ hostname: '127.0.0.1', port: 0, socket: { data: (s, d, port, addr) => void s.send(d, port, addr), error() {} } });
    writeFileSync(pskPath, randomBytes(32).toString('base64') + '\n');
    for (const name of ['a', 'b']) {
      const dir = join(t.path, name);
      mkdirSync(dir);
      const stateDir = join(dir, 'state');
      const cfg = await writeAgentConfig(dir, `commonConfig: { stateDir: ${stateDir} }\n`);
      const r = await runCli(['identity', '--json', '--config', cfg.path, '--node-name', name]);
      expect(r.code).toBe(0);
      nodes.push({ name, dir, stateDir, peerId: (JSON.parse(r.stdout) as { peerId: string }).peerId, port: await freePort(), admin: '', agent: null });
    }
    thirdKey = await generateKeyPair('Ed25519');
    thirdPort = await freeStablePort(); // listened on again and again by the in-process node c
    const third: Node = { name: 'c', dir: '', stateDir: '', peerId: peerIdFromPrivateKey(thirdKey).toString(), port: thirdPort, admin: '', agent: null };
    writeFileSync(catalogPath, catalogYaml([...nodes, third], services()));
    await Promise.all(nodes.map((n) => startNode(n)));
  }, 60_000);

  afterAll(async () => {
    for (const n of nodes) await n.agent?.stop();
    sink.stop(true);
    echo.stop(true);
    closer?.stop();
    reset.stop(true);
    banner.stop(true);
    slow?.stop();
    udpEcho?.close();
    t.cleanup();
  });

  test('TCP to an endpoint on the other node: 1 GiB up intact with bounded memory, echo both ways, status shows a direct peer', async () => {
    const [a, b] = nodes;
    const port = await proxyPort(a!, 'default/sink:p');
    const r = await upload(port, Number(process.env.UPLOAD_MB ?? 1024) * 1024 * 1024);
    expect(r.reply).toBe(r.sent);
    const rss = async (n: Node) => Number(/^process_resident_memory_bytes (\d+)/m.exec(await (await fetch(`${n.admin}/metrics`)).text())?.[1]) / 1048576;
    const [ra, rb] = [await rss(a!), await rss(b!)];
    console.log(`1 GiB through the tunnel in ${(r.ms / 1000).toFixed(1)} s (${((1024 * 8) / r.ms).toFixed(2)} Gbit/s); RSS a ${ra.toFixed(0)} MiB, b ${rb.toFixed(0)} MiB`);
    // Buffering is bounded per stream: memory must not grow with the bytes moved.
    expect(ra).toBeLessThan(400);
    expect(rb).toBeLessThan(400);
    const ep = await proxyPort(a!, 'default/echo:p');
    const msg = randomBytes(3 * 1024 * 1024 + 17);
    expect((await echoOnce(ep, msg)).equals(msg)).toBe(true);
    const st = await getJson<{ tunnel: { encryption: string; peers: { node: string; path: string; encryption: string }[] } }>(`${a!.admin}/status`);
    expect(st.tunnel.encryption).toContain('pnet/xsalsa20');
    expect(st.tunnel.peers.find((p) => p.node === 'b')?.encryption).toBe('/tls/1.0.0');
    expect(st.tunnel.peers.find((p) => p.node === 'b')?.path).toBe('direct');
    const status = await runCli(['status', '--admin', a!.admin.replace('http://', '')]);
    expect(status.stdout).toMatch(/b\s+direct\s+rtt/);
  }, 60_000);

  test('UDP through the tunnel keeps datagram boundaries: 500 datagrams of varied sizes', async () => {
    const port = await proxyPort(nodes[0]!, 'default/uecho:p');
    const got: number[] = [];
    const c = await Bun.udpSocket({ hostname: '127.0.0.1', port: 0, socket: { data: (_s, d) => void got.push(d.length) } });
    try {
      // The first datagram opens the session (and the tunnel stream); the rest follow in paced bursts, as a
      // real client would: a burst larger than the receiver's kernel buffer is lost with or without a tunnel.
      c.send(new Uint8Array(7), port, '127.0.0.1');
      await waitFor(() => got.length === 1 || null, 'the first datagram back');
      got.length = 0;
      const sizes = Array.from({ length: 500 }, (_, i) => 1 + ((i * 997) % 1400));
      for (let i = 0; i < sizes.length; i += 10) {
        for (const n of sizes.slice(i, i + 10)) c.send(new Uint8Array(n).fill(n & 0xff), port, '127.0.0.1');
        await Bun.sleep(5);
      }
      await waitFor(() => got.length >= sizes.length || null, () => `${got.length} of ${sizes.length} datagrams back`, 10_000);
      expect(got.sort((x, y) => x - y)).toEqual(sizes.sort((x, y) => x - y));
    } finally {
      c.close();
    }
  }, 30_000);

  test('sequential connections reuse session streams: small, large (raw) and half-closed ones all arrive intact', async () => {
    const [a] = nodes;
    const port = await proxyPort(a!, 'default/echo:p');
    const before = await sessionReuses();
    // Small echoes stay framed and free their session; 1 MiB ones switch to raw and close theirs; mixed in turn.
    for (let i = 0; i < 30; i++) {
      const msg = randomBytes(i % 5 === 4 ? 1024 * 1024 : 100 + i * 37);
      expect((await echoOnce(port, msg)).equals(msg)).toBe(true);
    }
    expect(await sessionReuses()).toBeGreaterThanOrEqual(before + 15);
    // A backend that answers and ends first, and reads late: the client gets the answer and the end through a
    // session, and the next connection on the session works. (Meant to have b still holding bytes for the
    // backend when the next CONNECT arrives, the case session.ts defers; loopback buffers absorb them here.)
    const closerPort = await proxyPort(a!, 'default/closer:p');
    for (let i = 0; i < 4; i++) {
      expect(await sendAndRead(closerPort, new Uint8Array(250 * 1024))).toBe('bye');
      expect((await echoOnce(port, Buffer.from(`after ${i}`))).toString()).toBe(`after ${i}`);
    }
    // The sink answers only after the client's FIN: a FIN carried on a session, then the reply, then its end.
    const sink = await proxyPort(a!, 'default/sink:p');
    for (let i = 0; i < 5; i++) {
      const r = await upload(sink, 64 * 1024);
      expect(r.reply).toBe(r.sent);
    }
  }, 60_000);

  test('a session whose receiver still writes to a slow endpoint holds the next CONNECT until then: both connections intact', async () => {
    const [a] = nodes;
    const slowPort = await proxyPort(a!, 'default/slow:p');
    const echoPort = await proxyPort(a!, 'default/echo:p');
    const payload = randomBytes(200 * 1024); // under RAW_AFTER: the session stays framed and is reused
    // The client sends 200 KiB and FIN; the backend has already answered "bye" and ended, so the client is done and
    // a's side releases the session while b still holds most of the 200 KiB for a backend that is not reading.
    const t0 = performance.now();
    expect(await sendAndRead(slowPort, payload)).toBe('bye');
    const before = await sessionReuses();
    // The next connection takes the same pooled session: its CONNECT reaches b behind the held bytes. (Here the
    // stream's own pause holds it until b has written the rest; session.ts's deferral covers a CONNECT delivered
    // in the same read as the FIN, which this run does not produce: checked with a log line in that branch.)
    const next = randomBytes(40 * 1024);
    expect((await echoOnce(echoPort, next)).equals(next)).toBe(true);
    expect(await sessionReuses()).toBeGreaterThan(before);
    await waitFor(() => slow.counts.length > 0 || null, 'the slow backend counted what it got', 10_000);
    expect(slow.counts[0]).toBe(payload.length);
    expect(performance.now() - t0).toBeGreaterThan(1000); // the backend really read late
  }, 30_000);

  test('an endpoint that resets as soon as it accepts: each client is closed at once, none left waiting', async () => {
    const port = await proxyPort(nodes[0]!, 'default/reset:p');
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      const how = await new Promise<string>((resolve) => {
        void Bun.connect({
          hostname: '127.0.0.1', port,
          socket: {
            open(s) { s.write('GET / HTTP/1.1\r\n\r\n'); },
            data() {},
            close() { resolve('closed'); },
            connectError() { resolve('refused'); },
          },
        });
        setTimeout(() => resolve('still open after 3 s'), 3000);
      });
      expect(`${i}: ${how}`).toBe(`${i}: closed`);
      expect(performance.now() - t0).toBeLessThan(3000);
    }
  }, 90_000);

  test('a server that speaks first is heard, and a refused endpoint loses none of the client\'s first bytes', async () => {
    const [a] = nodes;
    // Server first: the client sends nothing until it has read the banner.
    const bannerPort = await proxyPort(a!, 'default/banner:p');
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const got = await new Promise<string>((resolve, reject) => {
        let text = '';
        void Bun.connect({
          hostname: '127.0.0.1', port: bannerPort,
          socket: {
            data(s, d) {
              text += Buffer.from(d).toString();
              if (text === 'hello\n') s.write('ping');
              if (text === 'hello\nping') {
                resolve(text);
                s.end();
              }
            },
            close() { reject(new Error(`closed after ${JSON.stringify(text)}`)); },
            connectError(_s, e) { reject(e); },
          },
        });
      });
      expect(got).toBe('hello\nping');
      expect(performance.now() - t0).toBeLessThan(3000);
    }
    // Client first, about half the picks refused on b: every payload, small or 40 KiB, comes back exact after the
    // proxy's retry on the other endpoint (it keeps the first bytes until an upstream is connected).
    const flakyPort = await proxyPort(a!, 'default/flaky:p');
    for (let i = 0; i < 12; i++) {
      const msg = randomBytes(i === 5 ? 40 * 1024 : 100 + i * 97);
      expect((await echoOnce(flakyPort, msg)).equals(msg)).toBe(true);
    }
    await nodes[1]!.agent!.waitForLog(/refused a tunnel CONNECT.*connect failed/);
  }, 60_000);

  test('200 concurrent connections through one peer connection all complete', async () => {
    const port = await proxyPort(nodes[0]!, 'default/echo:p');
    const msgs = Array.from({ length: 200 }, (_, i) => randomBytes(1000 + i * 50));
    const back = await Promise.all(msgs.map((m) => echoOnce(port, m)));
    back.forEach((b, i) => expect(b.equals(msgs[i]!)).toBe(true));
    const st = await getJson<{ tunnel: { peers: { node: string }[] } }>(`${nodes[0]!.admin}/status`);
    expect(st.tunnel.peers.filter((p) => p.node === 'b').length).toBe(1);
  }, 60_000);

  /** A tunnel node inside the test process, reading the same catalog file: a third party for the refusal tests. */
  interface ThirdOptions { cipher?: 'auto' | 'noble'; encryption?: 'tls' | 'noise'; pskMode?: 'handshake' | 'stream' }
  async function inProcessNode(name: string, key: PrivateKey, psk: Uint8Array | null, o: ThirdOptions = {}): Promise<{ tunnel: TunnelModule; log: string[]; stop: () => Promise<void> }> {
    const catalog = new Catalog({ logger: createMemoryLogger('warn') });
    const src = new FileSource({ path: catalogPath, catalog, logger: createMemoryLogger('warn'), convert: { serviceFilterMode: 'FilterIfLabelExists' } });
    await src.start();
    catalog.flush();
    const config = defaultConfig('agent', 'edge').modules.edgeTunnel;
    Object.assign(config, { enable: true, listenPort: thirdPort, listenInterfaces: 'lo', mdns: false, cipher: o.cipher ?? 'auto', encryption: o.encryption ?? 'tls' });
    config.psk.mode = o.pskMode ?? 'handshake';
    applyLibraryPatches(createMemoryLogger('warn')); // as the agent does before its tunnel starts
    const logger = createMemoryLogger('warn');
    const tunnel = new TunnelModule({ config, nodeName: name, catalog, privateKey: key, psk, logger });
    await tunnel.start();
    return { tunnel, log: logger.lines, stop: async () => { await tunnel.stop(); await src.stop(); } };
  }
  const pskOf = () => derivePsk(readFileSync(pskPath));
  const target = (ip: string, port: number) => ({ nodeName: 'b', protocol: 'tcp' as const, ip, port });

  test('the receiving node dials only its own endpoints: anything else gets FAILED', async () => {
    // The in-process node uses the pure-JS engines (XSalsa20 and Noise's ChaCha20-Poly1305) and offers Noise
    // first, against b's libsodium and TLS preference: the fallback path works and interoperates.
    const c = await inProcessNode('c', thirdKey, pskOf(), { cipher: 'noble', encryption: 'noise' });
    try {
      const signal = () => AbortSignal.timeout(5000);
      // A real endpoint on b: allowed.
      const ok = await c.tunnel.openStream(target('127.0.0.1', sink.port), signal());
      expect(c.tunnel.describe().encryption).toContain('pnet/xsalsa20 (noble) + /noise (chacha20-poly1305: noble)');
      expect(c.tunnel.describe().peers.find((p) => p.node === 'b')?.encryption).toBe('/noise');
      // 16 MiB through the pure-JS engine, checked by the sink's hash.
      const data = randomBytes(16 * 1024 * 1024);
      const reply = new Promise<string>((res) => ok.addEventListener('message', (e) => res(Buffer.from((e.data as Uint8Array).subarray()).toString())));
      for (let o = 0; o < data.length; o += 100_000) if (!ok.send(data.subarray(o, o + 100_000))) await ok.onDrain();
      await ok.close();
      expect(await reply).toBe(`${data.length} ${createHash('sha256').update(data).digest('hex')}`);
      // Not an endpoint at all (ssh on b's loopback), and an endpoint the catalog places on node a: refused.
      await expect(c.tunnel.openStream(target('127.0.0.1', 22), signal())).rejects.toMatchObject({ code: 'TUNNEL_REFUSED' });
      await expect(c.tunnel.openStream(target('127.0.0.2', sink.port), signal())).rejects.toMatchObject({ code: 'TUNNEL_REFUSED' });
      await nodes[1]!.agent!.waitForLog(/refused a tunnel CONNECT.*127\.0\.0\.1:22.*is not an endpoint on node b/);
      await nodes[1]!.agent!.waitForLog(/refused a tunnel CONNECT.*127\.0\.0\.2:\d+.*is not an endpoint on node b/);
    } finally {
      await c.stop();
    }
  }, 30_000);

  test('a node\'s own addresses: IP literals only (its Hostname is not resolved), and only the ports of edgeTunnel.nodePorts', async () => {
    const c = await inProcessNode('c', thirdKey, pskOf());
    const before = sinkConnections;
    try {
      // b's Node lists "Hostname: localhost"; the original would resolve it and dial b's loopback (its admin server,
      // KubeEdge's metaServer on 127.0.0.1:10550, …).
      await expect(c.tunnel.openStream(target('localhost', sink.port), AbortSignal.timeout(5000))).rejects.toMatchObject({ code: 'TUNNEL_REFUSED' });
      await nodes[1]!.agent!.waitForLog(/refused a tunnel CONNECT.*target="?tcp localhost:\d+.*is not an IP address/);
      // b's InternalIP at a port nodePorts (default [22]) does not list.
      await expect(c.tunnel.openStream(target('127.0.0.11', sink.port), AbortSignal.timeout(5000))).rejects.toMatchObject({ code: 'TUNNEL_REFUSED' });
      await nodes[1]!.agent!.waitForLog(/refused a tunnel CONNECT.*127\.0\.0\.11:\d+.*is not in modules\.edgeTunnel\.nodePorts \[22\]/);
      expect(sinkConnections).toBe(before);
    } finally {
      await c.stop();
    }
  }, 30_000);

  test('a flood of idle sockets (200 from one address, 20 from each of five others) does not keep a bound peer out', async () => {
    const b = nodes[1]!;
    const flood: Socket[] = [];
    let closedByB = 0;
    const open = (localAddress: string) => new Promise<void>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: b.port, localAddress }, () => resolve());
      s.on('error', () => resolve());
      s.on('close', () => closedByB++);
      flood.push(s);
    });
    const metric = async (reason: string) => Number(new RegExp(`edgemesh_tunnel_admission_refused_total\\{reason="${reason}"\\} (\\d+)`).exec((await getText(`${b.admin}/metrics`)).body)?.[1] ?? 'NaN');
    const before = { perAddress: await metric('per-address'), silent: await metric('silent') };
    await Promise.all([
      ...Array.from({ length: 200 }, () => open('127.0.0.2')),
      ...[3, 4, 5, 6, 7].flatMap((h) => Array.from({ length: 20 }, () => open(`127.0.0.${h}`))),
    ]);
    const c = await inProcessNode('c', thirdKey, pskOf());
    try {
      const t0 = performance.now();
      const s = await c.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(5000));
      const ms = performance.now() - t0;
      s.abort(new Error('connected'));
      expect(ms).toBeLessThan(1000);
      // 4 per address may wait for a handshake: the rest of the flood was closed at once, and counted.
      expect((await metric('per-address')) - before.perAddress).toBeGreaterThanOrEqual(196 + 5 * 16);
      // Those left waiting said nothing: closed after the first-bytes deadline (2 s).
      await waitFor(() => closedByB >= flood.length || null, () => `every flood socket closed (${closedByB} of ${flood.length})`, 6000);
      expect((await metric('silent')) - before.silent).toBeGreaterThanOrEqual(6 * 4);
    } finally {
      for (const f of flood) f.destroy();
      await c.stop();
    }
  }, 30_000);

  test('a peer claiming another node\'s name is refused, and cannot use the tunnel', async () => {
    const x = await inProcessNode('a', await generateKeyPair('Ed25519'), pskOf());
    const before = sinkConnections;
    try {
      // b either answers FAILED (unbound peer) or has already dropped the connection over the false claim.
      await expect(x.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(5000))).rejects.toThrow();
      await nodes[1]!.agent!.waitForLog(/refused a peer claiming a node name it is not bound to.*claimed=a/);
      // And the refused side is told why, in its own words.
      await waitFor(() => x.log.some((l) => l.includes("its catalog does not bind this node's name to this node's key")) || null, () => `x's log line\n${x.log.join('\n')}`, 5000);
      expect(sinkConnections).toBe(before);
    } finally {
      await x.stop();
    }
  }, 30_000);

  test('a UDP flow whose peer stops reading costs bounded memory: the receiving node drops and counts datagrams', async () => {
    const c = await inProcessNode('c', thirdKey, pskOf());
    try {
      const metric = async () => Number(/edgemesh_tunnel_udp_dropped_total (\d+)/.exec((await getText(`${nodes[1]!.admin}/metrics`)).body)?.[1] ?? 'NaN');
      const before = await metric();
      const s = await c.tunnel.openStream({ nodeName: 'b', protocol: 'udp', ip: '127.0.0.1', port: udpEcho.port }, AbortSignal.timeout(5000));
      s.pause(); // a reader that never reads: b's echoes pile up on its side of the stream
      const dg = new Uint8Array(2 + 1200);
      dg[0] = 1200 >> 8;
      dg[1] = 1200 & 0xff;
      // 8 MiB of datagrams out, paced, while nothing comes back in: past yamux's window and the 1 MiB limit.
      for (let i = 0; i < 7000; i++) {
        if (!s.send(dg)) await s.onDrain();
        if (i % 20 === 0) await Bun.sleep(1); // paced, so the echo server (in this process) keeps up
      }
      let dropped = 0;
      await waitFor(async () => (dropped = (await metric()) - before) > 500 || null, () => `more than 500 datagrams dropped on b (${dropped})`, 10_000);
      s.abort(new Error('done'));
      // b keeps serving UDP for everyone else.
      const other = await c.tunnel.openStream({ nodeName: 'b', protocol: 'udp', ip: '127.0.0.1', port: udpEcho.port }, AbortSignal.timeout(5000));
      const back = new Promise<number>((res) => other.addEventListener('message', (e) => res((e.data as Uint8Array).byteLength)));
      other.send(new Uint8Array([0, 3, 1, 2, 3]));
      expect(await back).toBe(5);
      other.abort(new Error('done'));
    } finally {
      await c.stop();
    }
  }, 40_000);

  test('UDP to an endpoint port nobody listens on: the ICMP refusal is counted, the receiving node keeps running', async () => {
    const c = await inProcessNode('c', thirdKey, pskOf());
    try {
      const s = await c.tunnel.openStream({ nodeName: 'b', protocol: 'udp', ip: '127.0.0.1', port: deadPort }, AbortSignal.timeout(5000));
      // Each datagram b sends to the dead port comes back as ECONNREFUSED on b's socket; a Bun UDP socket without
      // an error handler turns that into an uncaught error, which ended the agent process.
      for (let i = 0; i < 5; i++) {
        s.send(Uint8Array.from([0, 3, 1, 2, 3]));
        await Bun.sleep(50);
      }
      await Bun.sleep(200);
      s.abort(new Error('done'));
      expect(nodes[1]!.agent!.proc.exitCode).toBeNull();
      const other = await c.tunnel.openStream({ nodeName: 'b', protocol: 'udp', ip: '127.0.0.1', port: udpEcho.port }, AbortSignal.timeout(5000));
      const back = new Promise<number>((res) => other.addEventListener('message', (e) => res((e.data as Uint8Array).byteLength)));
      other.send(Uint8Array.from([0, 3, 1, 2, 3]));
      expect(await back).toBe(5);
      other.abort(new Error('done'));
      expect((await getText(`${nodes[1]!.admin}/metrics`)).body).toMatch(/edgemesh_tunnel_udp_refused_total [1-9]/);
    } finally {
      await c.stop();
    }
  }, 30_000);

  test('hole punching cannot be used as a port scanner: an unbound peer, or any peer on a direct connection, gets no dial', async () => {
    const trap = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { open: () => void trapped++, data: () => {} } });
    let trapped = 0;
    try {
      const b = peerIdFromString(nodes[1]!.peerId);
      // DCUtR's HolePunch messages: CONNECT (100) with our "observed" address b should dial, then SYNC (300).
      const addr = multiaddr(`/ip4/127.0.0.1/tcp/${trap.port}`).bytes;
      const connectMsg = Uint8Array.from([0x08, 100, 0x12, addr.length, ...addr]);
      const syncMsg = Uint8Array.from([0x08, 0xac, 0x02]);
      // A peer in no catalog, then a bound one on a direct connection (one at a time: they share a listen port).
      for (const [name, key] of [['x', await generateKeyPair('Ed25519')], ['c', thirdKey]] as const) {
        const who = await inProcessNode(name, key, pskOf());
        try {
          const node = (who.tunnel as unknown as { node: import('@libp2p/interface').Libp2p }).node;
          const s = await node.dialProtocol(multiaddr(`/ip4/127.0.0.1/tcp/${nodes[1]!.port}/p2p/${b.toString()}`), '/libp2p/dcutr', { signal: AbortSignal.timeout(5000), runOnLimitedConnection: true });
          const closed = new Promise<void>((res) => s.addEventListener('close', () => res()));
          try {
            s.send(lengthPrefixed(connectMsg));
            s.send(lengthPrefixed(syncMsg));
          } catch {
            // b may reset the stream at once (the fix): nothing more to send
          }
          await Promise.race([closed, Bun.sleep(1500)]);
        } finally {
          await who.stop();
        }
      }
      await nodes[1]!.agent!.waitForLog(/refused a hole-punch request.*the peer is not bound to any node/);
      await nodes[1]!.agent!.waitForLog(/refused a hole-punch request.*not a relayed connection/);
      await Bun.sleep(500);
      expect(trapped).toBe(0); // the code before dialed 127.0.0.1:<trap> for either
      expect((await getText(`${nodes[1]!.admin}/metrics`)).body).toMatch(/edgemesh_tunnel_punch_refused_total [2-9]/);
    } finally {
      trap.stop(true);
    }
  }, 30_000);

  test('garbage on the proxy, discovery and session protocols costs only that stream; the node keeps serving', async () => {
    const c = await inProcessNode('c', thirdKey, pskOf());
    try {
      const node = (c.tunnel as unknown as { node: import('@libp2p/interface').Libp2p }).node;
      const b = peerIdFromString(nodes[1]!.peerId);
      (await c.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(5000))).abort(new Error('connected'));
      const garbage = [
        Uint8Array.from([0x40, ...new Array<number>(64).fill(0xff)]), // a whole message of noise (wire type 7)
        Uint8Array.from([0xff, 0xff, 0xff, 0x7f]), // a length prefix of ~268 MB
        Uint8Array.from([0x05, 0x08, 0x07, 0x22, 0xff, 0xfe]), // a valid prefix, then a bad enum and a truncated field
      ];
      for (const proto of ['/libp2p/tunnel-proxy/1.0.0', '/libp2p/tunnel-discovery/1.0.0', '/edgemesh/tunnel-session/1.0.0', '/edgemesh/tunnel-session/1.1.0']) {
        for (const g of garbage) {
          const s = await node.dialProtocol(b, proto, { signal: AbortSignal.timeout(5000) });
          const closed = new Promise<void>((res) => s.addEventListener('close', () => res()));
          s.send(g);
          await Promise.race([closed, Bun.sleep(12_000).then(() => { throw new Error(`${proto}: b did not end a stream of garbage`); })]);
        }
      }
      // A protocol the peer does not speak fails with the error name the session fallback (older peers) keys on.
      const unsupported = await node.dialProtocol(b, '/edgemesh/no-such-protocol/1.0.0', { signal: AbortSignal.timeout(5000) }).then(() => 'opened', (e: Error) => e.name);
      expect(unsupported).toBe('UnsupportedProtocolError');
      // The same peer connection and node still serve a real request.
      const ok = await c.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(5000));
      ok.abort(new Error('done'));
      expect(nodes[1]!.agent!.proc.exitCode).toBeNull();
    } finally {
      await c.stop();
    }
  }, 60_000);

  test('a node with the wrong PSK, or none, cannot connect in either PSK form, and the refusals are counted', async () => {
    const pskFailures = async () => Number(/^edgemesh_tunnel_psk_failures_total (\d+)/m.exec(await (await fetch(`${nodes[1]!.admin}/metrics`)).text())?.[1] ?? NaN);
    const cases: { why: string; psk: Uint8Array | null; o: ThirdOptions; counted: boolean }[] = [
      { why: 'wrong key, proven in TLS', psk: derivePsk(randomBytes(32)), o: {}, counted: true },
      { why: 'wrong key, pnet stream', psk: derivePsk(randomBytes(32)), o: { pskMode: 'stream' }, counted: false },
      // Refused, but not always counted within the test's wait: the connection can stall before b's proof starts
      // (seen in about one run of five; the refusal itself always holds).
      { why: 'no key, TLS', psk: null, o: {}, counted: false },
      { why: 'no key, Noise', psk: null, o: { encryption: 'noise' }, counted: false },
    ];
    for (const c of cases) {
      const before = await pskFailures();
      const w = await inProcessNode('c', thirdKey, c.psk, c.o);
      try {
        const r = await w.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(4000)).then(() => 'connected', (e: { code?: string }) => e.code);
        expect(`${c.why}: ${r}`).toBe(`${c.why}: TUNNEL_DIAL`);
        const st = await getJson<{ tunnel: { peers: { peerId: string }[] } }>(`${nodes[1]!.admin}/status`);
        expect(st.tunnel.peers.some((p) => p.peerId === w.tunnel.peerId)).toBe(false);
        // A wrong proof is a definite refusal: b counts it (pnet cannot tell a wrong key from garbage).
        if (c.counted) await waitFor(async () => (await pskFailures()) > before, `${c.why}: b counts a PSK failure`, 15_000);
        // The dialing side says what happened to it, not that it refused someone.
        if (c.counted) {
          await waitFor(() => w.log.some((l) => l.includes('our tunnel connection was refused by the peer: the PSK check failed')) || null, () => `${c.why}: the dialer's own log line\n${w.log.join('\n')}`, 5000);
          expect(w.log.some((l) => l.includes('refused a tunnel connection that failed the PSK check'))).toBe(false);
        }
      } finally {
        await w.stop();
      }
    }
    await nodes[1]!.agent!.waitForLog(/refused a tunnel connection that failed the PSK check/);
  }, 60_000);

  test('the PSK is proven inside TLS by default; a node dialing in the pnet form with the right key still gets in', async () => {
    const st = await getJson<{ tunnel: { encryption: string } }>(`${nodes[0]!.admin}/status`);
    expect(st.tunnel.encryption).toStartWith('psk admission in TLS + /tls/1.0.0');
    const c = await inProcessNode('c', thirdKey, pskOf(), { pskMode: 'stream' });
    try {
      expect(c.tunnel.describe().encryption).toMatch(/^pnet\/xsalsa20 \((libsodium|noble)\) \+ \/tls\/1\.0\.0/);
      // Right after the refusals above (the same peer ID, refused four times), b sometimes resets the first
      // connections for a moment (ECONNRESET, seen in about one run in seven): retried for up to 5 s, as a
      // proxy's next connection would be.
      const open = () => c.tunnel.openStream(target('127.0.0.1', sink.port), AbortSignal.timeout(5000));
      const s = await (async () => {
        for (let tries = 0; ; tries++) {
          try {
            return await open();
          } catch (e) {
            if ((e as { code?: string }).code !== 'TUNNEL_DIAL' || tries >= 25) throw e;
            await Bun.sleep(200);
          }
        }
      })();
      const data = randomBytes(4 * 1024 * 1024);
      const reply = new Promise<string>((res) => s.addEventListener('message', (e) => res(Buffer.from((e.data as Uint8Array).subarray()).toString())));
      for (let o = 0; o < data.length; o += 100_000) if (!s.send(data.subarray(o, o + 100_000))) await s.onDrain();
      await s.close();
      expect(await reply).toBe(`${data.length} ${createHash('sha256').update(data).digest('hex')}`);
      expect(c.tunnel.describe().peers.find((p) => p.node === 'b')?.encryption).toBe('/tls/1.0.0');
    } finally {
      await c.stop();
    }
  }, 30_000);
  test('a relay added to the config file is picked up live: the agent connects and reserves on it', async () => {
    // A third agent, "r", serves as a relay; node a's config gains it while a keeps running.
    const dir = join(t.path, 'r');
    mkdirSync(dir);
    const port = await freePort();
    const relayNodes = [{ nodeName: 'r', advertiseAddress: [`127.0.0.1:${port}`] }];
    const cfg = await writeAgentConfig(dir, `commonConfig: { stateDir: ${join(dir, 'state')} }\n`);
    const id = await runCli(['identity', '--json', '--config', cfg.path, '--node-name', 'r']);
    const r: Node = { name: 'r', dir, stateDir: join(dir, 'state'), peerId: (JSON.parse(id.stdout) as { peerId: string }).peerId, port, admin: '', agent: null };
    const third: Node = { name: 'c', dir: '', stateDir: '', peerId: peerIdFromPrivateKey(thirdKey).toString(), port: thirdPort, admin: '', agent: null };
    writeFileSync(catalogPath, catalogYaml([...nodes, third, r], services()));
    const rcfg = await writeAgentConfig(dir, `
catalog: { file: ${catalogPath} }
commonConfig: { stateDir: ${r.stateDir} }
modules:
  edgeProxy: { enable: false }
  edgeTunnel: { enable: true, listenPort: ${port}, listenInterfaces: lo, mdns: false, directHostEndpoints: false, psk: { path: ${pskPath} }, relayNodes: ${JSON.stringify(relayNodes)} }
`);
    r.agent = new AgentProcess(['agent', '--config', rcfg.path, '--node-name', 'r']);
    try {
      await r.agent.waitForLog(/tunnel started .*relay=true/, 15_000);
      const a = nodes[0]!;
      const conf = JSON.parse(readFileSync(a.config!, 'utf8')) as { modules: { edgeTunnel: Record<string, unknown> } };
      conf.modules.edgeTunnel.relayNodes = relayNodes;
      writeFileSync(a.config!, JSON.stringify(conf, null, 2));
      await a.agent!.waitForLog(/relay list reloaded from=none to=r/, 10_000);
      await a.agent!.waitForLog(/connected to relay relay=r/, 10_000);
      await waitFor(async () => {
        const st = await getJson<{ tunnel: { peers: { node: string }[]; listen: string[] } }>(`${a.admin}/status`);
        return st.tunnel.listen.some((l) => l.includes('/p2p-circuit')) || null;
      }, () => `a reservation on r\n${a.agent!.logs.slice(-2000)}`, 10_000);
    } finally {
      await r.agent.stop();
    }
  }, 60_000);
});
