/** The UDP data path of one service port, through real sockets on loopback. */
import { describe, expect, test } from 'bun:test';
import { Balancer } from '../src/lb/balancer.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { UdpServicePort } from '../src/proxy/udp.ts';
import { waitFor } from './helpers.ts';

const RING = { partitionCount: 100, replicationFactor: 10, load: 1.25 };

async function echoServer(tag: string) {
  return Bun.udpSocket({ hostname: '127.0.0.1', socket: { data(s, buf, port, addr) { s.send(Buffer.concat([Buffer.from(tag), buf]), port, addr); }, error() {} } });
}

describe('UDP service port', () => {
  test('1,000 datagrams of varied sizes: none lost, none merged, each answered by the session\'s endpoint', async () => {
    const backs = [await echoServer('A'), await echoServer('B')];
    const b = new Balancer({ ring: RING });
    b.setEndpoints(backs.map((s, i) => ({ key: `127.0.0.1:${s.port}`, ip: '127.0.0.1', port: s.port, nodeName: '', podName: `p${i}` })));
    const p = new UdpServicePort({ host: '127.0.0.1', port: 0, balancer: b, logger: createMemoryLogger('warn'), isLocal: () => true, idleTimeoutMs: 60_000, maxSessions: 100 });
    await p.start();
    const got: Buffer[] = [];
    const client = await Bun.udpSocket({ hostname: '127.0.0.1', socket: { data(_s, buf) { got.push(Buffer.from(buf)); }, error() {} } });
    try {
      const sizes: number[] = [];
      for (let i = 0; i < 1000; i++) {
        const size = 4 + ((i * 97) % 1400);
        sizes.push(size);
        const d = Buffer.alloc(size, i & 0xff);
        d.writeUInt32BE(i, 0);
        client.send(d, p.port, '127.0.0.1');
        if (i % 50 === 49) await waitFor(() => got.length >= i - 10, 'replies keep up', 3000, 1);
      }
      await waitFor(() => got.length === 1000, () => `1000 replies (got ${got.length})`, 5000);
      const tags = new Set(got.map((g) => g.subarray(0, 1).toString()));
      expect(tags.size).toBe(1); // one client address:port is one session, pinned to one endpoint
      const seen = got.map((g) => g.readUInt32BE(1)).sort((a, c) => a - c);
      expect(seen).toEqual(Array.from({ length: 1000 }, (_, i) => i));
      for (const g of got) expect(g.length - 1).toBe(sizes[g.readUInt32BE(1)]!); // boundaries kept
      expect(p.stats.active).toBe(1);
      // A second client is a second session; round robin sends it to the other endpoint.
      const other: Buffer[] = [];
      const c2 = await Bun.udpSocket({ hostname: '127.0.0.1', socket: { data(_s, buf) { other.push(Buffer.from(buf)); }, error() {} } });
      c2.send(Buffer.from('x'), p.port, '127.0.0.1');
      await waitFor(() => other.length === 1, 'second session');
      expect(other[0]!.subarray(0, 1).toString()).not.toBe([...tags][0]);
      c2.close();
    } finally {
      client.close();
      p.stop();
      for (const s of backs) s.close();
    }
  });

  test('idle sessions end after the timeout and release their endpoint', async () => {
    const back = await echoServer('A');
    const b = new Balancer({ ring: RING });
    b.setEndpoints([{ key: `127.0.0.1:${back.port}`, ip: '127.0.0.1', port: back.port, nodeName: '', podName: 'p' }]);
    const p = new UdpServicePort({ host: '127.0.0.1', port: 0, balancer: b, logger: createMemoryLogger('warn'), isLocal: () => true, idleTimeoutMs: 300, maxSessions: 100 });
    await p.start();
    let replies = 0;
    const client = await Bun.udpSocket({ hostname: '127.0.0.1', socket: { data() { replies++; }, error() {} } });
    try {
      client.send(Buffer.from('hi'), p.port, '127.0.0.1');
      await waitFor(() => replies === 1, 'reply');
      expect(b.activeCount(`127.0.0.1:${back.port}`)).toBe(1);
      await waitFor(() => p.stats.active === 0, 'session expired', 2000);
      expect(b.activeCount(`127.0.0.1:${back.port}`)).toBe(0);
      client.send(Buffer.from('again'), p.port, '127.0.0.1');
      await waitFor(() => replies === 2, 'a new session answers');
    } finally {
      client.close();
      p.stop();
      back.close();
    }
  });
});
