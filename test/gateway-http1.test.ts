/**
 * The gateway's HTTP/1.1 framing (src/gateway/http1.ts): what a smuggler or a broken client sends is refused
 * with the right status; chunked bodies are found whatever the read sizes; and the address selection.
 */
import { describe, expect, test } from 'bun:test';
import { ChunkScanner, HttpError, findHeadEnd, parseRequestHead, parseResponseHead, responseFraming } from '../src/gateway/http1.ts';
import { selectAddresses } from '../src/gateway/addresses.ts';
import { clientHelloSni } from '../src/gateway/stream.ts';

const bytes = (s: string) => new TextEncoder().encode(s);
const req = (s: string) => {
  const b = bytes(s);
  return parseRequestHead(b, findHeadEnd(b));
};
const refused = (s: string): number => {
  try {
    req(s);
    return 0;
  } catch (e) {
    return (e as HttpError).status;
  }
};

describe('gateway HTTP/1.1 framing', () => {
  test('a plain request: method, target, headers lower-cased, keep-alive by version and Connection', () => {
    const h = req('GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-Thing:  v \r\n\r\n');
    expect([h.method, h.target, h.minor, h.keepAlive]).toEqual(['GET', '/a?b=1', 1, true]);
    expect(h.headers).toEqual([['host', 'x.test'], ['x-thing', 'v']]);
    expect(h.framing).toEqual({ kind: 'none' });
    expect(req('GET / HTTP/1.0\r\n\r\n').keepAlive).toBe(false);
    expect(req('GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n').keepAlive).toBe(true);
    expect(req('GET / HTTP/1.1\r\nConnection: close\r\n\r\n').keepAlive).toBe(false);
    expect(req('GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n').upgrade).toBe('websocket');
  });

  test('smuggling shapes and malformed heads are refused', () => {
    expect(refused('POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n')).toBe(400);
    expect(refused('POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n')).toBe(400);
    expect(refused('POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n')).toBe(400);
    expect(refused('POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n')).toBe(400);
    expect(refused('POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n')).toBe(400);
    expect(refused('POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n')).toBe(501);
    expect(refused('GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n')).toBe(400);
    expect(refused('GET / HTTP/1.1\r\nBad Name: a\r\n\r\n')).toBe(400);
    expect(refused('GET / HTTP/1.1\r\nHost : a\r\n\r\n')).toBe(400);
    expect(refused('GET / HTTP/1.1\r\nA: b\rc\r\n\r\n')).toBe(400);
    expect(refused('GET / HTTP/2.0\r\n\r\n')).toBe(505);
    expect(refused('GET /\r\n\r\n')).toBe(400);
    expect(refused('G(T / HTTP/1.1\r\n\r\n')).toBe(400);
    expect(refused(`GET / HTTP/1.1\r\n${'A: b\r\n'.repeat(101)}\r\n`)).toBe(431);
    // Equal repeated lengths are one length (RFC 9110 §8.6).
    expect(req('POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n').framing).toEqual({ kind: 'length', length: 5 });
  });

  test('response framing: HEAD, 204, 304 have no body; chunked; length; otherwise until close', () => {
    const r = (s: string) => {
      const b = bytes(s);
      return parseResponseHead(b, findHeadEnd(b))!;
    };
    expect(responseFraming(r('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n'), 'HEAD')).toEqual({ kind: 'none' });
    expect(responseFraming(r('HTTP/1.1 204 No Content\r\n\r\n'), 'GET')).toEqual({ kind: 'none' });
    expect(responseFraming(r('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), 'GET')).toEqual({ kind: 'chunked' });
    expect(responseFraming(r('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n'), 'GET')).toEqual({ kind: 'length', length: 3 });
    expect(responseFraming(r('HTTP/1.1 200 OK\r\n\r\n'), 'GET')).toEqual({ kind: 'close' });
    expect(r('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n').keepAlive).toBe(false);
    expect(parseResponseHead(bytes('HTTP/1.1 2000 OK\r\n\r\n'), 19)).toBeNull();
  });

  test('a chunked body is found at any read size, trailers included; bad framing throws', () => {
    const body = '5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n';
    const after = 'GET /next HTTP/1.1\r\n';
    for (const step of [1, 2, 3, 7, 64]) {
      const s = new ChunkScanner();
      const all = bytes(body + after);
      let taken = 0;
      for (let i = 0; i < all.length && !s.done; i += step) taken += s.feed(all.subarray(i, Math.min(all.length, i + step)));
      expect(s.done).toBe(true);
      expect(taken).toBe(body.length);
    }
    expect(() => new ChunkScanner().feed(bytes('5\r\nhelloXX'))).toThrow();
    expect(() => new ChunkScanner().feed(bytes('zz\r\n'))).toThrow();
  });
});

describe('gateway addresses', () => {
  const ifs = {
    lo: [{ address: '127.0.0.1', family: 'IPv4' }],
    eth0: [{ address: '192.168.1.5', family: 'IPv4' }, { address: 'fe80::1', family: 'IPv6' }],
    'eth0:1': [{ address: '192.168.1.6', family: 'IPv4' }],
    wlan0: [{ address: '10.1.2.3', family: 'IPv4' }],
  } as unknown as ReturnType<typeof import('node:os').networkInterfaces>;
  test('nic, includeIP and excludeIP as the original reads them ("*" excludes nothing)', () => {
    expect(selectAddresses({ nic: '*', includeIP: '*', excludeIP: '*' }, ifs)).toEqual(['10.1.2.3', '127.0.0.1', '192.168.1.5', '192.168.1.6']);
    expect(selectAddresses({ nic: 'eth0', includeIP: '*', excludeIP: '*' }, ifs)).toEqual(['192.168.1.5', '192.168.1.6']);
    expect(selectAddresses({ nic: '*', includeIP: '192.168.0.0/16, 10.1.2.3', excludeIP: '192.168.1.6' }, ifs)).toEqual(['10.1.2.3', '192.168.1.5']);
    expect(selectAddresses({ nic: 'nope', includeIP: '', excludeIP: '' }, ifs)).toEqual([]);
  });
});

describe('TLS ClientHello server name', () => {
  test('read from a real ClientHello; undefined until it is whole; garbage and mutations never throw', async () => {
    const hello = await new Promise<Uint8Array>((resolve) => {
      const srv = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data(s, d) { resolve(new Uint8Array(d)); s.end(); srv.stop(true); } } });
      void Bun.connect({ hostname: '127.0.0.1', port: srv.port, tls: { serverName: 'Shop.Example.com', rejectUnauthorized: false }, socket: { data() {}, error() {}, connectError() {} } }).catch(() => {});
    });
    expect(clientHelloSni(hello)).toBe('shop.example.com');
    for (let n = 0; n < hello.length; n++) expect(clientHelloSni(hello.subarray(0, n))).toBeUndefined();
    expect(clientHelloSni(new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'))).toBeNull();
    let seed = 3;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 5000; i++) {
      const m = hello.slice();
      for (let k = 0; k < 1 + rnd(6); k++) m[rnd(m.length)] = rnd(256);
      const r = clientHelloSni(m);
      expect(r === null || r === undefined || /^[a-z0-9._-]+$/.test(r)).toBe(true);
    }
  });
});
