/** The SOCKS5 proxy: reach a node by its name (real sockets; curl as a real client). */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { Catalog } from '../src/catalog/catalog.ts';
import { mergeConfig } from '../src/config/load.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { MetricsRegistry } from '../src/obs/metrics.ts';
import { ProxyModule } from '../src/proxy/index.ts';
import { REP } from '../src/proxy/socks5.ts';
import { freePort, runCli } from './helpers.ts';

describe('SOCKS5', () => {
  const logger = createMemoryLogger('warn');
  const catalog = new Catalog({ logger });
  const big = new Uint8Array(48 * 1024 * 1024).map((_, i) => (i * 13) & 0xff);
  const web = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: (req) => new Response(req.url.endsWith('/big') ? big : 'hello from edge-2') });
  const metrics = new MetricsRegistry();
  let proxy: ProxyModule;
  let port = 0;
  let closedPort = 0;

  beforeAll(async () => {
    for (const [name, ip] of [['edge-1', '127.0.0.1'], ['edge-2', '127.0.0.1']] as const) {
      catalog.upsert({ kind: 'nodes', value: { name, addresses: [{ type: 'InternalIP', address: ip }], podCIDRs: [], labels: {}, annotations: {} } });
    }
    catalog.flush();
    port = await freePort();
    closedPort = await freePort(); // nothing listens there
    const { config } = mergeConfig('agent', 'edge', {
      modules: {
        edgeProxy: { enable: true, listenAddress: '127.0.0.1', interception: 'none', socks5Proxy: { enable: true, listenPort: port } },
        // The node ports SOCKS5 may reach (ssh only by default): the test's web server and a closed port.
        edgeTunnel: { nodePorts: [22, web.port!, closedPort] },
      },
    });
    proxy = new ProxyModule({ config, catalog, nodeName: 'edge-1', logger, metrics });
    await proxy.start();
  });
  afterAll(async () => {
    await proxy.stop();
    web.stop(true);
  });

  /** Send `parts` one write at a time (a few ms apart) and collect what comes back until close. */
  const talk = (parts: Uint8Array[]) =>
    new Promise<Buffer>((resolve) => {
      const got: Buffer[] = [];
      void Bun.connect({ hostname: '127.0.0.1', port, socket: {
        async open(s) {
          for (const p of parts) {
            s.write(p);
            await Bun.sleep(3);
          }
        },
        data(_s, d) { got.push(Buffer.from(d)); },
        close() { resolve(Buffer.concat(got)); },
      } });
    });
  const connectReq = (atyp: number, addr: Uint8Array, p: number, cmd = 1) => new Uint8Array([5, cmd, 0, atyp, ...addr, p >> 8, p & 0xff]);
  const name = (n: string) => new Uint8Array([n.length, ...new TextEncoder().encode(n)]);

  test('curl reaches a node by name (socks5h)', async () => {
    const r = await runCli(['-s', '--max-time', '5', '--socks5-hostname', `127.0.0.1:${port}`, `http://edge-2:${web.port}/`], { bin: ['curl'] });
    expect(r.stdout).toBe('hello from edge-2');
  });

  test('a bulk download through SOCKS5 moves to the splice(2) worker, byte-exact', async () => {
    // The first bulk connection starts the worker (and may finish in JavaScript): download until one is spliced.
    let spliced = 0;
    for (let i = 0; i < 10 && !spliced; i++) {
      // Async: the server and the proxy run on this process's event loop.
      const curl = Bun.spawn(['curl', '-s', '--max-time', '20', '--socks5-hostname', `127.0.0.1:${port}`, `http://edge-2:${web.port}/big`], { stdout: 'pipe' });
      const body = new Uint8Array(await new Response(curl.stdout).arrayBuffer());
      expect(Bun.hash(body)).toBe(Bun.hash(big));
      spliced = Number(/^edgemesh_proxy_spliced_connections_total (\d+)$/m.exec(metrics.render())?.[1]);
    }
    expect(spliced).toBeGreaterThanOrEqual(1);
  }, 60_000);

  test('a handshake split into single bytes still works, and bytes after the request reach the target', async () => {
    const req = new Uint8Array([5, 1, 0, ...connectReq(3, name('edge-2'), web.port!), ...new TextEncoder().encode('GET / HTTP/1.0\r\n\r\n')]);
    const out = await talk([...req].map((b) => new Uint8Array([b])));
    expect([...out.subarray(0, 2)]).toEqual([5, 0]);
    expect([...out.subarray(2, 12)]).toEqual([5, REP.OK, 0, 1, 0, 0, 0, 0, 0, 0]);
    expect(out.subarray(12).toString()).toContain('hello from edge-2');
  });

  test('refusals carry SOCKS5 reply codes', async () => {
    const rep = async (req: Uint8Array) => (await talk([new Uint8Array([5, 1, 0]), req]))[3];
    expect(await rep(connectReq(1, new Uint8Array([127, 0, 0, 1]), web.port!))).toBe(REP.ADDRESS_TYPE);
    expect(await rep(connectReq(3, name('nowhere'), 22))).toBe(REP.HOST_UNREACHABLE);
    expect(await rep(connectReq(3, name('edge-1'), 22))).toBe(REP.NOT_ALLOWED);
    expect(await rep(connectReq(3, name('edge-2'), web.port!, 2))).toBe(REP.COMMAND);
    expect(await rep(connectReq(3, name('edge-2'), closedPort))).toBe(REP.REFUSED);
    // A port of the node that edgeTunnel.nodePorts does not list (kubelet's, say): not allowed, not dialed.
    expect(await rep(connectReq(3, name('edge-2'), 10250))).toBe(REP.NOT_ALLOWED);
    // A client that offers only username/password gets "no acceptable methods".
    expect([...(await talk([new Uint8Array([5, 1, 2])]))]).toEqual([5, 0xff]);
    // Garbage is closed without an answer.
    expect((await talk([new Uint8Array([4, 1, 0, 80, 127, 0, 0, 1, 0])])).length).toBe(0);
  });
});
