/**
 * HTTPS on the edge gateway: certificates from kubernetes.io/tls Secrets in the catalog file, chosen by SNI;
 * mutual TLS; TLS versions; a rotated Secret seen by a new connection while an old one keeps working. Real
 * clients: curl and openssl s_client against `edgemesh gateway`.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, freePort, tempDir, waitFor, writeAgentConfig } from './helpers.ts';
import { serviceYaml } from './fixtures/objects.ts';

const tools = ['openssl', 'curl'].every((t) => Bun.which(t));

async function sh(cmd: string, stdin = ''): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn(['bash', '-c', cmd], { stdin: new TextEncoder().encode(stdin), stdout: 'pipe', stderr: 'pipe' });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out, err };
}

describe.skipIf(!tools)('edge gateway (HTTPS)', () => {
  const t = tempDir('edgemesh-gwtls-');
  const d = t.path;
  const backend = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: (req) => new Response(`hello ${req.headers.get('x-forwarded-proto')} ${new URL(req.url).pathname}`) });
  let port = 0, passPort = 0, tcpPort = 0, termPort = 0;
  let gw: AgentProcess;
  // Backends that terminate TLS themselves (passthrough), and a TCP echo.
  const tlsBackends: ReturnType<typeof Bun.serve>[] = [];
  const echo = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data: (sock, b) => void sock.write(b), end: (sock) => void sock.end() }, allowHalfOpen: true });
  const catalog = join(d, 'catalog.yaml');

  /** A CA, and server/client certificates it signs (and one from another CA). */
  async function makeCerts(): Promise<void> {
    const run = async (c: string) => {
      const r = await sh(`cd ${d} && ${c}`);
      if (r.code !== 0) throw new Error(`${c}: ${r.err}`);
    };
    for (const ca of ['ca', 'evil']) await run(`openssl req -x509 -newkey rsa:2048 -nodes -keyout ${ca}.key -out ${ca}.crt -days 2 -subj /CN=${ca}-root 2>/dev/null`);
    const leaf = async (name: string, ca: string, san: string) => {
      await run(`openssl req -newkey rsa:2048 -nodes -keyout ${name}.key -out ${name}.csr -subj /CN=${name} 2>/dev/null`);
      writeFileSync(join(d, `${name}.ext`), `subjectAltName=${san}\n`);
      await run(`openssl x509 -req -in ${name}.csr -CA ${ca}.crt -CAkey ${ca}.key -CAcreateserial -out ${name}.crt -days 2 -extfile ${name}.ext 2>/dev/null`);
    };
    await leaf('a', 'ca', 'DNS:a.example.com');
    await leaf('b', 'ca', 'DNS:b.example.com');
    await leaf('a2', 'ca', 'DNS:a.example.com'); // the rotated certificate for a
    await leaf('m', 'ca', 'DNS:m.example.com');
    await leaf('client', 'ca', 'DNS:client');
    await leaf('badclient', 'evil', 'DNS:client');
    await leaf('p', 'ca', 'DNS:p.example.com');
    await leaf('q', 'ca', 'DNS:q.example.com');
  }
  const b64 = (f: string) => readFileSync(join(d, f)).toString('base64');
  const secret = (name: string, crt: string, key: string, ca?: string) => `apiVersion: v1
kind: Secret
metadata: { name: ${name}, namespace: shop }
type: kubernetes.io/tls
data: { tls.crt: ${b64(crt)}, tls.key: ${b64(key)}${ca ? `, ca.crt: ${b64(ca)}` : ''} }`;
  const catalogText = (aCert: string) => [
    serviceYaml({ name: 'web', clusterIP: '10.96.0.10', port: 80, target: backend.port! }),
    secret('a-cert', `${aCert}.crt`, `${aCert}.key`),
    secret('b-cert', 'b.crt', 'b.key'),
    secret('m-cert', 'm.crt', 'm.key', 'ca.crt'),
    `apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: edge, namespace: shop }
spec:
  selector: { kubeedge: edgemesh-gateway }
  servers:
    - { port: { number: ${port}, name: https-a, protocol: HTTPS }, hosts: [a.example.com], tls: { mode: SIMPLE, credentialName: a-cert } }
    - { port: { number: ${port}, name: https-b, protocol: HTTPS }, hosts: [b.example.com], tls: { mode: SIMPLE, credentialName: b-cert, minProtocolVersion: TLSV1_3 } }
    - { port: { number: ${port}, name: https-m, protocol: HTTPS }, hosts: [m.example.com], tls: { mode: MUTUAL, credentialName: m-cert } }`,
    `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec: { hosts: ["*.example.com"], gateways: [edge], http: [{ route: [{ destination: { host: web } }] }] }`,
    ...(['p', 'q'] as const).map((n, i) => serviceYaml({ name: `tls-${n}`, clusterIP: `10.96.1.${i + 1}`, port: 443, portName: 'https', target: tlsBackends[i]!.port! })),
    serviceYaml({ name: 'echo', clusterIP: '10.96.1.9', port: 7, portName: 'tcp', target: echo.port! }),
    `apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: streams, namespace: shop }
spec:
  selector: { kubeedge: edgemesh-gateway }
  servers:
    - { port: { number: ${passPort}, name: tls, protocol: TLS }, hosts: ["*.example.com"], tls: { mode: PASSTHROUGH } }
    - { port: { number: ${tcpPort}, name: tcp, protocol: TCP }, hosts: ["*"] }
    - { port: { number: ${termPort}, name: tls-term, protocol: TLS }, hosts: [b.example.com], tls: { mode: SIMPLE, credentialName: b-cert } }`,
    `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: streams, namespace: shop }
spec:
  hosts: ["*.example.com"]
  gateways: [streams]
  tls:
    - { match: [{ sniHosts: [p.example.com] }], route: [{ destination: { host: tls-p } }] }
    - { match: [{ sniHosts: [q.example.com] }], route: [{ destination: { host: tls-q, port: { number: 443 } } }] }
  tcp:
    - { match: [{ port: ${tcpPort} }], route: [{ destination: { host: echo } }] }
    - { match: [{ port: ${termPort} }], route: [{ destination: { host: echo } }] }`,
  ].join('\n---\n') + '\n';

  beforeAll(async () => {
    await makeCerts();
    for (const n of ['p', 'q']) {
      tlsBackends.push(Bun.serve({ hostname: '127.0.0.1', port: 0, tls: { cert: readFileSync(join(d, `${n}.crt`), 'utf8'), key: readFileSync(join(d, `${n}.key`), 'utf8') }, fetch: () => new Response(`${n}-backend`) }));
    }
    [port, passPort, tcpPort, termPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
    writeFileSync(catalog, catalogText('a'));
    const cfg = await writeAgentConfig(d, 'modules:\n  edgeGateway: { includeIP: 127.0.0.1 }\n', 'gateway');
    gw = new AgentProcess(['gateway', '--config', cfg.path, '--catalog', catalog, '--node-name', 'gw']);
    await gw.waitForLog(new RegExp(`gateway listening address=127\\.0\\.0\\.1:${port} protocol=HTTPS`), 20_000);
    await gw.waitForLog(new RegExp(`gateway listening address=127\\.0\\.0\\.1:${tcpPort} protocol=TCP`), 20_000);
  }, 60_000);

  afterAll(async () => {
    await gw?.stop();
    backend.stop(true);
    for (const b of tlsBackends) b.stop(true);
    echo.stop(true);
    t.cleanup();
  });

  const curl = (host: string, extra = '') => sh(`curl -s --max-time 3 --cacert ${d}/ca.crt --resolve ${host}:${port}:127.0.0.1 ${extra} https://${host}:${port}/x`);
  const subject = async (sni: string, extra = '') => (await sh(`openssl s_client -connect 127.0.0.1:${port} -servername ${sni} ${extra} </dev/null 2>/dev/null | openssl x509 -noout -subject -serial 2>/dev/null`)).out;

  test('SNI chooses the certificate; requests are routed and marked X-Forwarded-Proto: https', async () => {
    expect(await subject('a.example.com')).toContain('CN = a');
    expect(await subject('b.example.com')).toContain('CN = b');
    const a = await curl('a.example.com');
    expect([a.code, a.out]).toEqual([0, 'hello https /x']);
    expect((await curl('b.example.com')).out).toBe('hello https /x');
  });

  test('versions: TLS 1.2 and 1.3 by default, TLS 1.1 refused; a server with minProtocolVersion TLSV1_3 refuses 1.2', async () => {
    expect(await subject('a.example.com', '-tls1_2')).toContain('CN = a');
    expect(await subject('a.example.com', '-tls1_1')).toBe('');
    expect(await subject('b.example.com', '-tls1_3')).toContain('CN = b');
    // OpenSSL fixes the version before SNI picks b's settings: the connection is closed right after the handshake.
    const b12 = await curl('b.example.com', '--tls-max 1.2');
    expect(b12.out).toBe('');
    expect(b12.code).not.toBe(0);
    expect((await curl('a.example.com', '--tls-max 1.2')).out).toBe('hello https /x');
  });

  test('mutual TLS: a client certificate from the CA is accepted; none, or one from another CA, is refused', async () => {
    expect((await curl('m.example.com', `--cert ${d}/client.crt --key ${d}/client.key`)).out).toBe('hello https /x');
    const none = await curl('m.example.com');
    expect(none.out).toBe('');
    expect(none.code).not.toBe(0);
    const bad = await curl('m.example.com', `--cert ${d}/badclient.crt --key ${d}/badclient.key`);
    expect(bad.out).toBe('');
    expect(bad.code).not.toBe(0);
  });

  test('a rotated Secret: a new connection gets the new certificate, an open one keeps working', async () => {
    const serial = (out: string) => /serial=(\w+)/.exec(out)?.[1];
    const before = serial(await subject('a.example.com'));
    // An open keep-alive connection (openssl s_client, requests written on its stdin over time).
    const keep = Bun.spawn(['openssl', 's_client', '-quiet', '-connect', `127.0.0.1:${port}`, '-servername', 'a.example.com', '-CAfile', `${d}/ca.crt`], { stdin: 'pipe', stdout: 'pipe', stderr: 'ignore' });
    let got = '';
    void (async () => {
      for await (const c of keep.stdout) got += new TextDecoder().decode(c);
    })();
    keep.stdin.write('GET /one HTTP/1.1\r\nHost: a.example.com\r\n\r\n');
    keep.stdin.flush();
    await waitFor(() => got.includes('hello https /one') || null, 'the first answer on the open connection');
    writeFileSync(catalog, catalogText('a2'));
    await waitFor(async () => {
      const s = serial(await subject('a.example.com'));
      return s && s !== before ? s : null;
    }, 'the new certificate on a new connection', 5000, 100);
    keep.stdin.write('GET /two HTTP/1.1\r\nHost: a.example.com\r\n\r\n');
    keep.stdin.flush();
    await waitFor(() => got.includes('hello https /two') || null, 'an answer on the old connection after the rotation');
    keep.kill();
    expect((await curl('a.example.com')).out).toBe('hello https /x');
  });

  test("TLS passthrough: the ClientHello's server name picks the backend, which terminates TLS itself; others are closed", async () => {
    const via = (host: string) => sh(`curl -s --max-time 3 --cacert ${d}/ca.crt --resolve ${host}:${passPort}:127.0.0.1 https://${host}:${passPort}/`);
    expect((await via('p.example.com')).out).toBe('p-backend'); // verified against p's own certificate: not terminated here
    expect((await via('q.example.com')).out).toBe('q-backend');
    const other = await via('z.example.com');
    expect([other.out, other.code === 0]).toEqual(['', false]);
    const plain = await sh(`printf 'GET / HTTP/1.1\\r\\nHost: p\\r\\n\\r\\n' | curl -s --max-time 2 telnet://127.0.0.1:${passPort}`);
    expect(plain.out).toBe('');
  });

  test('TCP servers: bytes to the one destination and back, half-close passed on', async () => {
    const got = await new Promise<string>((resolve) => {
      let out = '';
      void Bun.connect({ hostname: '127.0.0.1', port: tcpPort, allowHalfOpen: true, socket: {
        open(sock) { sock.write('ping over tcp'); sock.shutdown(); },
        data(_sock, b) { out += b.toString(); },
        close() { resolve(out); },
      } });
    });
    expect(got).toBe('ping over tcp');
  });

  test('TLS servers in SIMPLE mode: TLS ends here (the Secret\'s certificate), the plain bytes go to the tcp route', async () => {
    const got = await new Promise<string>((resolve, reject) => {
      let out = '';
      void Bun.connect({ hostname: '127.0.0.1', port: termPort, tls: { serverName: 'b.example.com', ca: readFileSync(join(d, 'ca.crt'), 'utf8') }, socket: {
        open(sock) { sock.write('hello through TLS'); },
        data(sock, b) { out += b.toString(); if (out.length >= 17) sock.end(); },
        close() { resolve(out); },
        connectError(_s, e) { reject(e); },
      } }).catch(reject);
    });
    expect(got).toBe('hello through TLS');
  });
});
