/** Consistent hashing by HTTP header, cookie and query parameter through the TCP service port (real sockets). */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { createHash } from 'node:crypto';
import { Balancer } from '../src/lb/balancer.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { TcpServicePort } from '../src/proxy/tcp.ts';

const RING = { partitionCount: 100, replicationFactor: 10, load: 1.25 };

describe('HTTP-aware hashing', () => {
  const servers = ['a', 'b', 'c', 'd'].map((id) =>
    Bun.serve({
      hostname: '127.0.0.1',
      port: 0,
      async fetch(req) {
        const body = new Uint8Array(await req.arrayBuffer());
        return new Response(`${id} ${body.length} ${createHash('sha256').update(body).digest('hex').slice(0, 16)}`);
      },
    }),
  );
  const balancer = new Balancer({ ring: RING });
  let port: TcpServicePort;
  const url = (path = '/') => `http://127.0.0.1:${port.port}${path}`;
  const who = async (path = '/', headers: Record<string, string> = {}) => {
    const r = await fetch(url(path), { headers: { connection: 'close', ...headers } });
    return { id: (await r.text()).split(' ')[0]!, setCookie: r.headers.get('set-cookie') };
  };

  beforeAll(() => {
    balancer.setEndpoints(servers.map((s, i) => ({ key: `127.0.0.1:${s.port}`, ip: '127.0.0.1', port: s.port!, nodeName: '', podName: `p${i}` })));
    port = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer, logger: createMemoryLogger('warn'), isLocal: () => true, connectTimeoutMs: 1000, idleTimeoutSec: 0, maxAttempts: 3 });
    port.start();
  });
  afterAll(() => {
    port.stop();
    for (const s of servers) s.stop(true);
  });

  test('header: the same User-Agent sticks to one backend; different ones spread', async () => {
    balancer.setPolicy({ kind: 'consistent-hash', hash: { kind: 'header', name: 'user-agent' } }, { enabled: false, timeoutSec: 0 });
    const first = (await who('/', { 'user-agent': 'agent-x' })).id;
    for (let i = 0; i < 20; i++) expect((await who('/', { 'user-agent': 'agent-x' })).id).toBe(first);
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) seen.add((await who('/', { 'user-agent': `agent-${i}` })).id);
    expect(seen.size).toBeGreaterThanOrEqual(3);
  });

  test('cookie: without it a cookie is set; with it the backend sticks', async () => {
    balancer.setPolicy({ kind: 'consistent-hash', hash: { kind: 'cookie', name: 'sid', path: '/', ttlSeconds: 3600 } }, { enabled: false, timeoutSec: 0 });
    const r = await who('/');
    expect(r.setCookie).toMatch(/^sid=[0-9a-f]{32}; Path=\/; Max-Age=3600; HttpOnly$/);
    const cookie = r.setCookie!.split(';')[0]!;
    for (let i = 0; i < 20; i++) {
      const again = await who('/', { cookie: `theme=dark; ${cookie}` });
      expect(again.id).toBe(r.id);
      expect(again.setCookie).toBeNull(); // only set when absent
    }
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) seen.add((await who('/', { cookie: `sid=user${i}` })).id);
    expect(seen.size).toBeGreaterThanOrEqual(3);
  });

  test('query parameter', async () => {
    balancer.setPolicy({ kind: 'consistent-hash', hash: { kind: 'query', name: 'user' } }, { enabled: false, timeoutSec: 0 });
    const first = (await who('/x?user=alice&y=1')).id;
    for (let i = 0; i < 10; i++) expect((await who(`/z?n=${i}&user=alice`)).id).toBe(first);
  });

  test('keep-alive and pipelining keep working, bodies arrive intact, non-HTTP bytes pass', async () => {
    balancer.setPolicy({ kind: 'consistent-hash', hash: { kind: 'header', name: 'x-user' } }, { enabled: false, timeoutSec: 0 });
    const body = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
    const digest = createHash('sha256').update(body).digest('hex').slice(0, 16);
    // Three pipelined requests on one connection, the second with a body.
    const req = (extra: string, b?: Uint8Array) => Buffer.concat([Buffer.from(`POST /p HTTP/1.1\r\nHost: x\r\nX-User: u1\r\nContent-Length: ${b?.length ?? 0}\r\n${extra}\r\n`), Buffer.from(b ?? [])]);
    const raw = Buffer.concat([req(''), req('', body), req('Connection: close\r\n')]);
    const text = await new Promise<string>((resolve) => {
      const parts: Buffer[] = [];
      void Bun.connect({ hostname: '127.0.0.1', port: port.port, socket: {
        open(s) { s.write(raw); },
        data(_s, d) { parts.push(Buffer.from(d)); },
        close() { resolve(Buffer.concat(parts).toString()); },
      } });
    });
    const bodies = text.split('HTTP/1.1 200').slice(1).map((r) => r.split('\r\n\r\n')[1]!);
    expect(bodies.length).toBe(3);
    const ids = new Set(bodies.map((b) => b.split(' ')[0]));
    expect(ids.size).toBe(1); // one connection, one backend
    expect(bodies[1]).toContain(`200000 ${digest}`);
    // Not HTTP at all: balanced without a key, bytes intact (an HTTP server answers 400, which proves delivery).
    const junk = await new Promise<string>((resolve) => {
      let out = '';
      void Bun.connect({ hostname: '127.0.0.1', port: port.port, socket: {
        open(s) { s.write('\x16\x03\x01 not http\r\n\r\n'); },
        data(_s, d) { out += Buffer.from(d).toString(); },
        close() { resolve(out); },
      } });
    });
    expect(junk).toContain('400');
  });
});
