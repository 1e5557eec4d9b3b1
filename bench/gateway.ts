#!/usr/bin/env bun
/**
 * HTTP through the edge gateway against direct, haproxy (http mode) and nginx (a reverse proxy), the same route
 * in each (Host `api.example.com`, path prefix `/api` rewritten to `/v1`), same run: wrk with keep-alive and with
 * a new connection per request, req/s, latency p50/p99 and the proxy's CPU per 1,000 requests. The proxies on
 * CPU 0 (one worker or thread each), the backend (nginx answering "hello") and wrk on CPU 1; rounds alternate.
 * `--https`: the same over TLS (one self-signed RSA-2048 certificate; TLS terminated by each proxy, plain HTTP to
 * the backend): new connections per second are then TLS handshakes per second.
 * Usage: bun bench/gateway.ts [--seconds=5] [--connections=50] [--rounds=3] [--https]   (needs wrk, nginx-light, haproxy, openssl)
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serviceYaml } from '../test/fixtures/objects.ts';
import { MAIN, freePort } from '../test/helpers.ts';
import { cpuSeconds, spawnPinned, wrkRun, writeNginxConf } from './tools.ts';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const seconds = arg('seconds', 5);
const conns = arg('connections', 50);
const rounds = arg('rounds', 3);
const https = process.argv.includes('--https');
const scheme = https ? 'https' : 'http';
const log = (s: string) => process.stderr.write(s + '\n');
for (const t of ['wrk', 'nginx', 'haproxy', 'taskset']) if (!Bun.which(t)) { log(`needs ${t}: apt-get install wrk nginx-light haproxy`); process.exit(1); }

const dir = mkdtempSync(join(tmpdir(), 'edgemesh-gwbench-'));
chmodSync(dir, 0o755); // nginx workers drop to an unprivileged user
const procs: ReturnType<typeof Bun.spawn>[] = [];
try {
  const [pBack, pGw, pHa, pNg] = [await freePort(), await freePort(), await freePort(), await freePort()];
  if (https) {
    Bun.spawnSync(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '2', '-subj', '/CN=api.example.com', '-addext', 'subjectAltName=DNS:api.example.com'], { stderr: 'ignore' });
    writeFileSync(join(dir, 'both.pem'), (await Bun.file(join(dir, 'cert.pem')).text()) + (await Bun.file(join(dir, 'key.pem')).text()));
    chmodSync(join(dir, 'key.pem'), 0o644); // nginx's workers read it
  }
  procs.push(spawnPinned('1', ['nginx', '-c', writeNginxConf(dir, [`127.0.0.1:${pBack}`]), '-p', dir]));

  writeFileSync(join(dir, 'haproxy.cfg'), `global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.0.1:${pHa}${https ? ` ssl crt ${join(dir, 'both.pem')}` : ''}\n  acl api hdr(host) -i api.example.com\n  acl pre path_beg /api\n  http-request set-path /v1%[path,regsub(^/api,)] if api pre\n  use_backend web if api pre\nbackend web\n  http-reuse always\n  server s 127.0.0.1:${pBack}\n`);
  procs.push(spawnPinned('0', ['haproxy', '-f', join(dir, 'haproxy.cfg')]));

  const ngDir = join(dir, 'ng');
  Bun.spawnSync(['mkdir', '-p', ngDir]);
  chmodSync(ngDir, 0o755);
  writeFileSync(join(ngDir, 'nginx.conf'), `daemon off;\nworker_processes 1;\npid ${ngDir}/nginx.pid;\nerror_log ${ngDir}/error.log;\nevents { worker_connections 4096; }\nhttp {\n  access_log off;\n  keepalive_requests 1000000;\n  upstream web { server 127.0.0.1:${pBack}; keepalive 64; }\n  server { listen 127.0.0.1:${pNg}${https ? ` ssl; ssl_certificate ${join(dir, 'cert.pem')}; ssl_certificate_key ${join(dir, 'key.pem')}` : ''}; server_name api.example.com; location /api/ { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://web/v1/; } }\n}\n`);
  procs.push(spawnPinned('0', ['nginx', '-c', join(ngDir, 'nginx.conf'), '-p', ngDir]));

  const catalog = join(dir, 'catalog.yaml');
  writeFileSync(catalog, `${serviceYaml({ name: 'web', clusterIP: '10.96.0.10', port: 80, target: pBack })}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: edge, namespace: shop }
spec: { selector: { kubeedge: edgemesh-gateway }, servers: [{ port: { number: ${pGw}, name: web, protocol: ${https ? 'HTTPS' : 'HTTP'} }, hosts: ["*"]${https ? ', tls: { mode: SIMPLE, credentialName: cert }' : ''} }] }
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: api, namespace: shop }
spec:
  hosts: [api.example.com]
  gateways: [edge]
  http: [{ match: [{ uri: { prefix: /api/ } }], rewrite: { uri: /v1/ }, route: [{ destination: { host: web } }] }]
${https ? `---
apiVersion: v1
kind: Secret
metadata: { name: cert, namespace: shop }
type: kubernetes.io/tls
data: { tls.crt: ${Buffer.from(await Bun.file(join(dir, 'cert.pem')).text()).toString('base64')}, tls.key: ${Buffer.from(await Bun.file(join(dir, 'key.pem')).text()).toString('base64')} }
` : ''}`);
  const cfg = join(dir, 'gateway.yaml');
  writeFileSync(cfg, `commonConfig: { stateDir: ${dir}/state, adminAddress: "", logLevel: warn }\nmodules:\n  edgeGateway: { includeIP: 127.0.0.1 }\n`);
  const gw = spawnPinned('0', [process.execPath, MAIN, 'gateway', '--config', cfg, '--catalog', catalog, '--node-name', 'bench']);
  procs.push(gw);
  const haPid = () => Number(Bun.spawnSync(['pgrep', '-f', `haproxy -f ${join(dir, 'haproxy.cfg')}`]).stdout.toString().trim().split('\n').pop());
  const ngPid = () => Number(Bun.spawnSync(['pgrep', '-f', 'nginx: worker', '-P', Bun.spawnSync(['cat', `${ngDir}/nginx.pid`]).stdout.toString().trim()]).stdout.toString().trim().split('\n')[0]);
  for (let i = 0; i < 100; i++) {
    if ((await fetch(`${scheme}://127.0.0.1:${pGw}/api/x`, { headers: { host: 'api.example.com' }, tls: { rejectUnauthorized: false } }).catch(() => null))?.ok) break;
    await Bun.sleep(100);
  }
  log(`backend nginx :${pBack}; gateway :${pGw}, haproxy :${pHa}, nginx proxy :${pNg}`);

  const targets = [
    ...(https ? [] : [{ name: 'direct', port: pBack, path: '/v1/x', pid: () => 0 }]),
    { name: 'edgemesh', port: pGw, path: '/api/x', pid: () => gw.pid },
    { name: 'haproxy', port: pHa, path: '/api/x', pid: haPid },
    { name: 'nginx', port: pNg, path: '/api/x', pid: ngPid },
  ];
  type Row = { rps: number; p50: number; p99: number; cpuPer1k: number };
  const results: Record<string, Record<string, Row[]>> = { 'keep-alive': {}, 'new connection': {} };
  for (let r = 0; r < rounds; r++) {
    for (const close of [false, true]) {
      const mode = close ? 'new connection' : 'keep-alive';
      const order = r % 2 ? [...targets].reverse() : targets;
      for (const t of order) {
        const pid = t.pid();
        const c0 = pid ? await cpuSeconds(pid) : 0;
        const w = await wrkRun('1', `${t.name === 'direct' ? 'http' : scheme}://127.0.0.1:${t.port}${t.path}`, conns, seconds, close, [], ['Host: api.example.com']);
        const cpu = pid ? (await cpuSeconds(pid)) - c0 : 0;
        (results[mode]![t.name] ??= []).push({ ...w, cpuPer1k: pid ? (cpu * 1000) / (w.rps * seconds) : 0 });
        if (close) await Bun.sleep(2000); // TIME_WAIT sockets of the last run
      }
    }
    log(`round ${r + 1} of ${rounds} done`);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const [mode, byName] of Object.entries(results)) {
    const direct = byName.direct ? median(byName.direct.map((x) => x.rps)) : NaN;
    const gwRps = median(byName.edgemesh!.map((x) => x.rps));
    for (const [name, rows] of Object.entries(byName)) {
      const rps = median(rows.map((x) => x.rps));
      const cpu = median(rows.map((x) => x.cpuPer1k));
      console.log(`${scheme.padEnd(6)}${mode.padEnd(15)} ${name.padEnd(9)} ${rps.toFixed(0).padStart(7)} req/s  ${direct ? `${(rps / direct).toFixed(2)} of direct  ` : ''}${name === 'edgemesh' ? '' : `gateway ${(gwRps / rps).toFixed(2)}× this  `}p50 ${median(rows.map((x) => x.p50)).toFixed(2)} ms  p99 ${median(rows.map((x) => x.p99)).toFixed(2)} ms${cpu ? `  ${(cpu * 1000).toFixed(0)} ms CPU per 1,000 requests` : ''}`);
    }
  }
} finally {
  for (const p of procs) p.kill();
  for (const pidFile of [join(dir, 'nginx.pid'), join(dir, 'ng', 'nginx.pid')]) Bun.spawnSync(['sh', '-c', `[ -f ${pidFile} ] && kill $(cat ${pidFile}) 2>/dev/null`]);
  if (!process.env.KEEP) rmSync(dir, { recursive: true, force: true });
}
