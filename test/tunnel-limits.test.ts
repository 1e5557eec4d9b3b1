/**
 * tunnelLimitConfig: streams per peer and in all, per direction, counted across a peer's connections (in process,
 * real TCP on loopback, PSK on). A stream over a limit is refused and counted; closing one makes room again.
 */
import { afterEach, describe, expect, test } from 'bun:test';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey, Stream } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { Catalog } from '../src/catalog/catalog.ts';
import { defaultConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { MetricsRegistry } from '../src/obs/metrics.ts';
import { TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { freeStablePort } from './helpers.ts';

describe('tunnel stream limits', () => {
  const modules: TunnelModule[] = [];
  const sink = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data: () => {} } });
  afterEach(async () => {
    for (const m of modules.splice(0)) await m.stop();
  });

  async function pair(limits: { rIn: number; aOut: number }) {
    applyLibraryPatches(createMemoryLogger('warn'));
    const psk = crypto.getRandomValues(new Uint8Array(32));
    const keys: Record<string, PrivateKey> = { r: await generateKeyPair('Ed25519'), a: await generateKeyPair('Ed25519') };
    const ports: Record<string, number> = { r: await freeStablePort(), a: await freeStablePort() };
    const catalog = () => {
      const c = new Catalog({ logger: createMemoryLogger('warn') });
      for (const n of ['r', 'a']) {
        c.upsert({ kind: 'nodes', value: { name: n, addresses: [], podCIDRs: [], labels: {}, annotations: { 'edgemesh.io/peer-id': peerIdFromPrivateKey(keys[n]!).toString(), 'edgemesh.io/tunnel-addresses': `/ip4/127.0.0.1/tcp/${ports[n]}` } } });
      }
      c.upsert({ kind: 'endpoints', value: { namespace: 'default', name: 'sink', from: 'Endpoints', endpoints: [{ ip: '127.0.0.1', nodeName: 'r', podName: '', hostname: '', ready: true, ports: [{ name: '', port: sink.port, protocol: 'TCP' }] }] } });
      c.flush();
      return c;
    };
    const metrics = new MetricsRegistry();
    const start = async (name: string, lim: Partial<Record<'tunnelPeerBaseStreamIn' | 'tunnelPeerBaseStreamOut', number>>, m?: MetricsRegistry) => {
      const base = defaultConfig('agent', 'edge').modules.edgeTunnel;
      const config = { ...base, enable: true, listenPort: ports[name]!, listenInterfaces: 'lo', mdns: false, holePunching: false, sessions: false, tunnelLimitConfig: { ...base.tunnelLimitConfig, ...lim } };
      const t = new TunnelModule({ config, nodeName: name, catalog: catalog(), privateKey: keys[name]!, psk, logger: createMemoryLogger('warn'), metrics: m });
      modules.push(t);
      await t.start();
      return t;
    };
    await start('r', { tunnelPeerBaseStreamIn: limits.rIn }, metrics);
    const a = await start('a', { tunnelPeerBaseStreamOut: limits.aOut });
    return { a, metrics };
  }
  const target = { nodeName: 'r', protocol: 'tcp' as const, ip: '127.0.0.1', port: sink.port };
  const open = (a: TunnelModule) => a.openStream(target, AbortSignal.timeout(5000));

  test('inbound: a peer may hold tunnelPeerBaseStreamIn streams at once; the next is refused and counted; a closed one makes room', async () => {
    const { a, metrics } = await pair({ rIn: 2, aOut: 100 });
    const held: Stream[] = [await open(a), await open(a)];
    await expect(open(a)).rejects.toThrow();
    expect(metrics.render()).toContain('edgemesh_tunnel_streams_limited_total{direction="inbound",limit="peer"} 1');
    await held.shift()!.close();
    await Bun.sleep(200);
    held.push(await open(a));
    for (const s of held) s.abort(new Error('done'));
  }, 30_000);

  test('outbound: a node opens at most tunnelPeerBaseStreamOut streams to one peer', async () => {
    const { a } = await pair({ rIn: 100, aOut: 1 });
    const s = await open(a);
    await expect(open(a)).rejects.toMatchObject({ code: 'TUNNEL_DIAL', message: expect.stringContaining('tunnelPeerBaseStreamOut reached') });
    s.abort(new Error('done'));
    await Bun.sleep(200);
    (await open(a)).abort(new Error('done'));
  }, 30_000);
});
