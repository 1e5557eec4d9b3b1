#!/usr/bin/env bun
/**
 * What a flood of strangers' connections costs a tunnel node, and whether a bound peer still gets in: an agent
 * ("b", pinned to CPU 1) receives idle TCP connections at --rate per second from five loopback addresses
 * (127.0.0.2-6, as five strangers) for --seconds; meanwhile a bound peer (an in-process tunnel node, "c") makes a
 * fresh connection to b and opens a stream every second (dial, PSK, TLS, yamux, CONNECT). Printed: b's CPU before
 * and during the flood, the flood's connections accepted vs refused by b's admission, and c's connect times.
 * With --base=DIR the agent of checkout DIR is measured the same way, right after.
 * Usage: bun bench/tunnel-flood.ts [--rate=1000] [--seconds=8] [--base=DIR]   (loopback only, no root)
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type Socket, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Catalog } from '../src/catalog/catalog.ts';
import { FileSource } from '../src/catalog/sources/file.ts';
import { defaultConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { derivePsk } from '../src/tunnel/psk.ts';
import { freeStablePort } from '../test/helpers.ts';
import { cpuSeconds, spawnPinned } from './tools.ts';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d;
const rate = Number(arg('rate', '1000'));
const seconds = Number(arg('seconds', '8'));
const base = process.argv.find((a) => a.startsWith('--base='))?.split('=')[1];
const log = (s: string) => process.stderr.write(s + '\n');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

async function measure(checkout: string): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'edgemesh-flood-'));
  const procs: ReturnType<typeof Bun.spawn>[] = [];
  const flood: Socket[] = [];
  try {
    const [pB, pC, adminB, sinkPort] = await Promise.all([freeStablePort(), freeStablePort(), freeStablePort(), freeStablePort()]);
    const sink = Bun.listen({ hostname: '127.0.0.1', port: sinkPort, socket: { data: () => {} } });
    writeFileSync(join(dir, 'psk'), randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
    const cfg = join(dir, 'b.yaml');
    writeFileSync(cfg, JSON.stringify({
      catalog: { file: join(dir, 'catalog.yaml') },
      commonConfig: { stateDir: join(dir, 'b'), adminAddress: `127.0.0.1:${adminB}`, logLevel: 'error' },
      modules: { edgeDNS: { enable: false }, edgeProxy: { enable: false }, edgeTunnel: { enable: true, listenPort: pB, listenInterfaces: 'lo', mdns: false, holePunching: false, psk: { path: join(dir, 'psk') } } },
    }));
    writeFileSync(join(dir, 'catalog.yaml'), ''); // written for real once b's peer ID is known
    const main = join(checkout, 'src/cli/main.ts');
    const id = Bun.spawnSync([process.execPath, main, 'identity', '--json', '--config', cfg, '--node-name', 'b']);
    const bPeer = (JSON.parse(id.stdout.toString()) as { peerId: string }).peerId;
    const cKey = await generateKeyPair('Ed25519');
    const node = (name: string, peer: string, port: number) => `apiVersion: v1\nkind: Node\nmetadata:\n  name: ${name}\n  annotations: { edgemesh.io/peer-id: ${peer}, edgemesh.io/tunnel-addresses: /ip4/127.0.0.1/tcp/${port} }\n`;
    writeFileSync(join(dir, 'catalog.yaml'), [
      node('b', bPeer, pB), node('c', peerIdFromPrivateKey(cKey).toString(), pC),
      `apiVersion: v1\nkind: Service\nmetadata: { name: sink, namespace: default }\nspec: { clusterIP: 10.96.9.9, ports: [{ name: p, port: 80 }] }\n`,
      `apiVersion: v1\nkind: Endpoints\nmetadata: { name: sink, namespace: default }\nsubsets: [{ addresses: [{ ip: 127.0.0.1, nodeName: b }], ports: [{ name: p, port: ${sinkPort} }] }]\n`,
    ].join('---\n'));
    const b = spawnPinned('1', [process.execPath, main, 'agent', '--config', cfg, '--node-name', 'b']);
    procs.push(b);
    for (let i = 0; !(await fetch(`http://127.0.0.1:${adminB}/readyz`).then((r) => r.ok, () => false)); i++) {
      if (i > 100) throw new Error('agent b did not become ready');
      await Bun.sleep(100);
    }
    // The bound peer: a fresh tunnel node per attempt (a new connection each time).
    applyLibraryPatches(createMemoryLogger('error'));
    const catalog = new Catalog({ logger: createMemoryLogger('error') });
    const src = new FileSource({ path: join(dir, 'catalog.yaml'), catalog, logger: createMemoryLogger('error'), convert: { serviceFilterMode: 'FilterIfLabelExists' } });
    await src.start();
    catalog.flush();
    const connectOnce = async (): Promise<number> => {
      const config = { ...defaultConfig('agent', 'edge').modules.edgeTunnel, enable: true, listenPort: pC, listenInterfaces: 'lo', mdns: false, holePunching: false };
      const c = new TunnelModule({ config, nodeName: 'c', catalog, privateKey: cKey, psk: derivePsk(readFileSync(join(dir, 'psk'))), logger: createMemoryLogger('error') });
      await c.start();
      const t0 = performance.now();
      try {
        const s = await c.openStream({ nodeName: 'b', protocol: 'tcp', ip: '127.0.0.1', port: sinkPort }, AbortSignal.timeout(10_000));
        s.abort(new Error('done'));
        return performance.now() - t0;
      } catch {
        return Infinity;
      } finally {
        await c.stop();
      }
    };
    const quiet: number[] = [];
    for (let i = 0; i < 3; i++) quiet.push(await connectOnce());
    const cpu0 = await cpuSeconds(b.pid);
    await Bun.sleep(2000);
    const idleCores = ((await cpuSeconds(b.pid)) - cpu0) / 2;
    // The flood: `rate` connections a second, round robin over five source addresses, left idle.
    let opened = 0, closedByB = 0;
    const start = performance.now();
    const cpu1 = await cpuSeconds(b.pid);
    const timer = setInterval(() => {
      for (let i = 0; i < rate / 20; i++) {
        const s = connect({ host: '127.0.0.1', port: pB, localAddress: `127.0.0.${2 + (opened % 5)}` });
        s.on('error', () => {});
        s.on('close', () => closedByB++);
        flood.push(s);
        opened++;
      }
    }, 50);
    const during: number[] = [];
    while (performance.now() - start < seconds * 1000) {
      during.push(await connectOnce());
      await Bun.sleep(500);
    }
    clearInterval(timer);
    const floodCores = ((await cpuSeconds(b.pid)) - cpu1) / ((performance.now() - start) / 1000);
    const metrics = await (await fetch(`http://127.0.0.1:${adminB}/metrics`)).text();
    await src.stop();
    sink.stop(true);
    return {
      checkout, rate, seconds, floodConnections: opened, closedByAgent: closedByB,
      admissionRefused: Object.fromEntries([...metrics.matchAll(/edgemesh_tunnel_admission_refused_total\{reason="([^"]+)"\} (\d+)/g)].map((m) => [m[1], Number(m[2])])),
      agentCoresIdle: Number(idleCores.toFixed(3)), agentCoresDuringFlood: Number(floodCores.toFixed(3)),
      boundPeerConnectMs: { quietMedian: Math.round(median(quiet)), duringFlood: during.map((x) => (Number.isFinite(x) ? Math.round(x) : 'failed')), duringFloodMedian: Math.round(median(during)) },
    };
  } finally {
    for (const s of flood) s.destroy();
    for (const p of procs) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const out = [await measure(resolve(import.meta.dir, '..'))];
if (base) out.push(await measure(resolve(base)));
console.log(JSON.stringify(out, null, 2));
process.exit(0);
