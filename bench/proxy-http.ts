#!/usr/bin/env bun
/**
 * HTTP through one proxied service port, against direct and haproxy, same run: wrk with keep-alive and with a
 * new connection per request (`Connection: close`), reporting req/s and latency p50/p99. The proxy (this
 * process, the shipped TcpServicePort) and haproxy on CPU 0; nginx and wrk on CPU 1.
 * Usage: bun bench/proxy-http.ts [--seconds=5] [--connections=50]   (needs wrk, nginx-light, haproxy)
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/helpers.ts';
import { spawnPinned, startHaproxy, startProxy, wrkRun, writeNginxConf } from './tools.ts';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const seconds = arg('seconds', 5);
const conns = arg('connections', 50);
const log = (s: string) => process.stderr.write(s + '\n');
for (const t of ['wrk', 'nginx', 'haproxy', 'taskset']) if (!Bun.which(t)) { log(`needs ${t}: apt-get install wrk nginx-light haproxy`); process.exit(1); }

Bun.spawnSync(['taskset', '-p', '-c', '0', String(process.pid)]);
const dir = mkdtempSync(join(tmpdir(), 'edgemesh-httpbench-'));
// nginx workers drop to an unprivileged user: they must be able to enter the directory.
chmodSync(dir, 0o755);
const procs: ReturnType<typeof Bun.spawn>[] = [];
try {
  const [pNginx, pHa] = [await freePort(), await freePort()];
  const nginxConf = writeNginxConf(dir, [`127.0.0.1:${pNginx}`]);
  procs.push(spawnPinned('1', ['nginx', '-c', nginxConf, '-p', dir]));
  procs.push(startHaproxy(dir, pHa, pNginx));
  const proxy = startProxy(pNginx);
  await Bun.sleep(500);
  log(`nginx :${pNginx}, edgemesh :${proxy.port}, haproxy :${pHa}`);

  // Async spawn inside: the proxy under test runs on this process's event loop, which spawnSync would block.
  const wrk = (port: number, close: boolean) => wrkRun('1', `http://127.0.0.1:${port}/`, conns, seconds, close);

  const rows: Record<string, unknown>[] = [];
  for (const close of [false, true]) {
    const mode = close ? 'new connection per request' : 'keep-alive';
    // Rounds in a fresh order each time; wrk with Connection: close leaves TIME_WAIT sockets, so pause between.
    const direct = await wrk(pNginx, close);
    if (close) await Bun.sleep(3000);
    const edge = await wrk(proxy.port, close);
    if (close) await Bun.sleep(3000);
    const ha = await wrk(pHa, close);
    rows.push({ mode, direct, edgemesh: edge, haproxy: ha });
    log(`${mode}: direct ${direct.rps.toFixed(0)} req/s (p50 ${direct.p50.toFixed(2)} ms, p99 ${direct.p99.toFixed(2)} ms); edgemesh ${edge.rps.toFixed(0)} (${(edge.rps / direct.rps).toFixed(2)}, p50 ${edge.p50.toFixed(2)}, p99 ${edge.p99.toFixed(2)}); haproxy ${ha.rps.toFixed(0)} (${(ha.rps / direct.rps).toFixed(2)}, p50 ${ha.p50.toFixed(2)}, p99 ${ha.p99.toFixed(2)})`);
    if (close) await Bun.sleep(3000);
  }
  proxy.stop();
  console.log(JSON.stringify(rows, null, 2));
} finally {
  for (const p of procs) p.kill();
  if (!process.env.KEEP) rmSync(dir, { recursive: true, force: true });
  else log(`kept ${dir}`);
}
