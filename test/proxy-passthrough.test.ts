/**
 * Protocols the proxy carries as opaque TCP: HTTPS with a client certificate (TLS stays end to end) and a
 * WebSocket held open for 60 s with periodic echoes.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { join } from 'node:path';
import { Balancer } from '../src/lb/balancer.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { TcpServicePort } from '../src/proxy/tcp.ts';
import { runCli, tempDir } from './helpers.ts';

const RING = { partitionCount: 100, replicationFactor: 10, load: 1.25 };
const haveOpenssl = !!Bun.which('openssl');

function portFor(backendPort: number): TcpServicePort {
  const b = new Balancer({ ring: RING });
  b.setEndpoints([{ key: `127.0.0.1:${backendPort}`, ip: '127.0.0.1', port: backendPort, nodeName: '', podName: 'p' }]);
  const p = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer: b, logger: createMemoryLogger('warn'), isLocal: () => true, connectTimeoutMs: 1000, idleTimeoutSec: 0, maxAttempts: 2 });
  p.start();
  return p;
}

describe.skipIf(!haveOpenssl)('HTTPS passthrough with a client certificate', () => {
  const t = tempDir();
  const f = (n: string) => join(t.path, n);
  let server: ReturnType<typeof Bun.serve>;
  let proxy: TcpServicePort;

  beforeAll(async () => {
    const ssl = (args: string[]) => runCli(args, { bin: ['openssl'] });
    await ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=test-ca', '-keyout', f('ca.key'), '-out', f('ca.crt')]);
    for (const who of ['server', 'client']) {
      await ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${who === 'server' ? 'localhost' : 'edge-client'}`, '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`)]);
      await Bun.write(f(`${who}.ext`), who === 'server' ? 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' : 'extendedKeyUsage=clientAuth\n');
      await ssl(['x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f(`${who}.ext`), '-out', f(`${who}.crt`)]);
    }
    server = Bun.serve({
      hostname: '127.0.0.1',
      port: 0,
      tls: { cert: Bun.file(f('server.crt')), key: Bun.file(f('server.key')), ca: Bun.file(f('ca.crt')), requestCert: true, rejectUnauthorized: true },
      fetch: () => new Response('secret over mTLS'),
    });
    proxy = portFor(server.port!);
  });
  afterAll(() => {
    proxy?.stop();
    server?.stop(true);
    t.cleanup();
  });

  test('the client certificate reaches the backend through the proxy; without it the backend refuses', async () => {
    const ok = await runCli(['-s', '--max-time', '5', '--cacert', f('ca.crt'), '--cert', f('client.crt'), '--key', f('client.key'), '--resolve', `localhost:${proxy.port}:127.0.0.1`, `https://localhost:${proxy.port}/`], { bin: ['curl'] });
    expect(ok.stdout).toBe('secret over mTLS');
    const denied = await runCli(['-s', '--max-time', '5', '--cacert', f('ca.crt'), '--resolve', `localhost:${proxy.port}:127.0.0.1`, `https://localhost:${proxy.port}/`], { bin: ['curl'] });
    expect(denied.stdout).not.toBe('secret over mTLS');
    expect(denied.code).not.toBe(0);
  });
});

describe('WebSocket through the proxy', () => {
  test('stays open for 60 s with an echo every second', async () => {
    const server = Bun.serve({
      hostname: '127.0.0.1',
      port: 0,
      fetch(req, srv) {
        return srv.upgrade(req) ? undefined : new Response('upgrade required', { status: 426 });
      },
      websocket: { message(ws, msg) { ws.send(`echo:${msg}`); } },
    });
    const proxy = portFor(server.port!);
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/`);
      const echoes: string[] = [];
      let closed = false;
      ws.onmessage = (e) => echoes.push(String(e.data));
      ws.onclose = () => { closed = true; };
      await new Promise<void>((resolve, reject) => { ws.onopen = () => resolve(); ws.onerror = () => reject(new Error('ws error')); });
      for (let i = 0; i < 60; i++) {
        ws.send(`m${i}`);
        await Bun.sleep(1000);
      }
      expect(closed).toBe(false);
      expect(echoes.length).toBe(60);
      expect(echoes[59]).toBe('echo:m59');
      ws.close();
    } finally {
      proxy.stop();
      server.stop(true);
    }
  }, 90_000);
});
