#!/usr/bin/env bun
/**
 * TCP throughput through one proxied service port, against a direct connection and haproxy, same run:
 * iperf3 with 1 and 4 streams. The proxy (this process, the shipped TcpServicePort) and haproxy are pinned to
 * CPU 0; iperf3 client and server to CPU 1. "edgemesh" hands bulk connections to its splice(2) worker (the
 * default), "edgemesh-js" keeps every byte in the JavaScript splice.
 * Usage: bun bench/proxy-tcp.ts [--seconds=5] [--pipe=BYTES (the splice pipes' size, default as shipped)]
 *        (needs iperf3 and haproxy)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/helpers.ts';
import { createLogger } from '../src/obs/logger.ts';
import { BulkSplicer, DEFAULT_PIPE_SIZE } from '../src/proxy/splicer.ts';
import { cpuSeconds, iperfClient, startHaproxy, startProxy } from './tools.ts';
import { spawnChild } from './children.ts';

const seconds = Number(process.argv.find((a) => a.startsWith('--seconds='))?.split('=')[1] ?? 5);
const pipeSize = Number(process.argv.find((a) => a.startsWith('--pipe='))?.split('=')[1] ?? DEFAULT_PIPE_SIZE);
const log = (s: string) => process.stderr.write(s + '\n');
for (const t of ['iperf3', 'haproxy', 'taskset']) if (!Bun.which(t)) { log(`needs ${t}: apt-get install iperf3 haproxy`); process.exit(1); }

// This process is the proxy: keep it on CPU 0.
Bun.spawnSync(['taskset', '-p', '-c', '0', String(process.pid)]);
const dir = mkdtempSync(join(tmpdir(), 'edgemesh-tcpbench-'));
const procs: ReturnType<typeof Bun.spawn>[] = [];
try {
  const [pServer, pHa] = [await freePort(), await freePort()];
  procs.push(spawnChild(['taskset', '-c', '1', 'iperf3', '-s', '-p', String(pServer), '-1', '--forceflush'], { stdout: 'ignore', stderr: 'ignore' }));
  const splicer = new BulkSplicer({ logger: createLogger('bench', { level: 'warn' }), pipeSize, idleTimeoutSec: 0 });
  if (!(await splicer.start())) throw new Error('the splice worker did not start');
  const proxy = startProxy(pServer, splicer);
  const jsProxy = startProxy(pServer);
  procs.push(startHaproxy(dir, pHa, pServer));
  await Bun.sleep(500);

  const haPid = procs[1]!.pid;
  // haproxy's worker is the process itself in foreground mode.
  const haCpu = () => cpuSeconds(haPid);
  const ourCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

  async function iperf(port: number, streams: number): Promise<number> {
    // iperf3 -s -1 serves one test; restart it for each run.
    const srv = spawnChild(['taskset', '-c', '1', 'iperf3', '-s', '-p', String(pServer), '-1'], { stdout: 'ignore', stderr: 'ignore' });
    await Bun.sleep(300);
    const gbps = await iperfClient('1', '127.0.0.1', port, seconds, streams);
    await srv.exited;
    return gbps;
  }

  procs[0]!.kill();
  await procs[0]!.exited;
  const rows: Record<string, number>[] = [];
  for (const streams of [1, 4]) {
    const direct = await iperf(pServer, streams);
    let c0 = ourCpu();
    const viaProxy = await iperf(proxy.port, streams);
    const edgeCpu = ourCpu() - c0;
    c0 = ourCpu();
    const viaJs = await iperf(jsProxy.port, streams);
    const jsCpu = ourCpu() - c0;
    c0 = await haCpu();
    const viaHa = await iperf(pHa, streams);
    const haproxyCpu = (await haCpu()) - c0;
    // CPU seconds per Gbit moved: cpu-seconds / (Gbit/s × seconds) = cores busy per Gbit/s.
    const perGbit = (cpu: number, gbps: number) => cpu / (gbps * seconds);
    rows.push({ streams, direct, edgemesh: viaProxy, edgemeshJs: viaJs, haproxy: viaHa, edgemeshCoresPerGbps: perGbit(edgeCpu, viaProxy), edgemeshJsCoresPerGbps: perGbit(jsCpu, viaJs), haproxyCoresPerGbps: perGbit(haproxyCpu, viaHa) });
    log(`${streams} stream(s): direct ${direct.toFixed(2)} Gbit/s, edgemesh ${viaProxy.toFixed(2)} (${(viaProxy / direct).toFixed(2)}, ${perGbit(edgeCpu, viaProxy).toFixed(3)} cores per Gbit/s), edgemesh-js ${viaJs.toFixed(2)} (${(viaJs / direct).toFixed(2)}, ${perGbit(jsCpu, viaJs).toFixed(3)}), haproxy ${viaHa.toFixed(2)} (${(viaHa / direct).toFixed(2)}, ${perGbit(haproxyCpu, viaHa).toFixed(3)} cores per Gbit/s)`);
  }
  proxy.stop();
  jsProxy.stop();
  await splicer.stop();
  console.log(JSON.stringify(rows, null, 2));
} finally {
  for (const p of procs) p.kill();
  rmSync(dir, { recursive: true, force: true });
}
