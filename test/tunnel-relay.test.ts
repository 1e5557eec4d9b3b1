/**
 * A relay serves bound peers only (in process, real TCP on loopback, PSK on): a peer in no catalog that holds the
 * PSK gets no reservation, and is counted; a bound peer gets one, as before.
 */
import { afterAll, describe, expect, test } from 'bun:test';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { Catalog } from '../src/catalog/catalog.ts';
import { defaultConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { MetricsRegistry } from '../src/obs/metrics.ts';
import { TunnelModule } from '../src/tunnel/index.ts';
import { applyLibraryPatches } from '../src/tunnel/patches/index.ts';
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2';
import { identify } from '@libp2p/identify';
import { yamux } from '@libp2p/yamux';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import { listenOnRunningNode } from '../src/tunnel/patches/private-api.ts';
import { bunTls } from '../src/tunnel/security/tls.ts';
import { bunTcp } from '../src/tunnel/transport.ts';
import { freeStablePort, waitFor } from './helpers.ts';

describe('relay reservations', () => {
  const modules: TunnelModule[] = [];
  afterAll(async () => {
    for (const m of modules.splice(0)) await m.stop();
  });

  test('a PSK holder bound to no node gets no reservation and is counted; a bound peer gets one', async () => {
    applyLibraryPatches(createMemoryLogger('warn'));
    const psk = crypto.getRandomValues(new Uint8Array(32));
    const keys: Record<string, PrivateKey> = { r: await generateKeyPair('Ed25519'), a: await generateKeyPair('Ed25519'), x: await generateKeyPair('Ed25519') };
    const ports: Record<string, number> = { r: await freeStablePort(), a: await freeStablePort(), x: await freeStablePort() };
    const relayNodes = [{ nodeName: 'r', advertiseAddress: [`127.0.0.1:${ports.r}`] }];
    // The catalog every node reads: r and a are bound; x is in no catalog.
    const catalogOf = () => {
      const c = new Catalog({ logger: createMemoryLogger('warn') });
      for (const n of ['r', 'a']) {
        c.upsert({ kind: 'nodes', value: { name: n, addresses: [], podCIDRs: [], labels: {}, annotations: { 'edgemesh.io/peer-id': peerIdFromPrivateKey(keys[n]!).toString(), 'edgemesh.io/tunnel-addresses': `/ip4/127.0.0.1/tcp/${ports[n]}` } } });
      }
      c.flush();
      return c;
    };
    const metrics = new MetricsRegistry();
    const start = async (name: string, m?: MetricsRegistry) => {
      const config = { ...defaultConfig('agent', 'edge').modules.edgeTunnel, enable: true, listenPort: ports[name]!, listenInterfaces: 'lo', mdns: false, holePunching: false, relayNodes };
      const t = new TunnelModule({ config, nodeName: name, catalog: catalogOf(), privateKey: keys[name]!, psk, logger: createMemoryLogger('warn'), metrics: m });
      modules.push(t);
      await t.start();
      return t;
    };
    await start('r', metrics);
    const a = await start('a');
    const circuitVia = (t: TunnelModule) => t.describe().listen.some((l) => l.includes('/p2p-circuit'));
    await waitFor(() => circuitVia(a) || null, () => `a holds a reservation on r (listen: ${a.describe().listen.join(' ')})`, 15_000);
    // x: a plain libp2p node with the PSK and the relay transport, as a stranger would build one, asking r for a
    // reservation directly (no discovery handshake that could get it cut off first).
    const x = await createLibp2p({
      privateKey: keys.x,
      addresses: { listen: [`/ip4/127.0.0.1/tcp/${ports.x}`] },
      transports: [bunTcp() as never, circuitRelayTransport() as never],
      connectionEncrypters: [bunTls({ key: psk, timeoutMs: 5000, onFailure: () => {} }) as never],
      streamMuxers: [yamux() as never],
      services: { identify: identify() as never },
    });
    try {
      const r = peerIdFromPrivateKey(keys.r!).toString();
      const asked = await listenOnRunningNode(x, [multiaddr(`/ip4/127.0.0.1/tcp/${ports.r}/p2p/${r}/p2p-circuit`)]).then(() => 'reserved', (e: Error) => e.message);
      expect(asked).not.toBe('reserved'); // the code before gave it one (4,096 slots, no limits)
      expect(x.getMultiaddrs().some((m) => m.toString().includes('/p2p-circuit'))).toBe(false);
      expect(metrics.render()).toMatch(/edgemesh_tunnel_relay_refused_total [1-9]/);
    } finally {
      await x.stop();
    }
  }, 40_000);
});
