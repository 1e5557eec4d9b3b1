/** Pieces the comparison benchmarks share: pinned servers, the haproxy baseline, the proxy under test. */
import type { BulkSplicer } from '../src/proxy/splicer.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Balancer } from '../src/lb/balancer.ts';
import type { LbPolicy } from '../src/lb/policy.ts';
import { createLogger } from '../src/obs/logger.ts';
import { TcpServicePort } from '../src/proxy/tcp.ts';
import { spawnChild } from './children.ts';

/**
 * A server pinned to `cpu`, its output discarded through real /dev/null fds: with Bun's 'ignore' the fds stay
 * closed and servers that write to them (nginx) collide with their own sockets.
 */
export function spawnPinned(cpu: string, cmd: string[]): ReturnType<typeof Bun.spawn> {
  return spawnChild(['taskset', '-c', cpu, ...cmd], { stdout: Bun.file('/dev/null'), stderr: Bun.file('/dev/null') });
}

/**
 * nginx's config for the HTTP benches, written into `dir`; returns its path. One worker answering "hello" on
 * each of `listens` (`host:port`), no access log, keep-alive without a request limit. The directory must be
 * enterable by nginx's unprivileged workers (mode 0755).
 */
export function writeNginxConf(dir: string, listens: string[]): string {
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, `daemon off;\nworker_processes 1;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents { worker_connections 4096; }\nhttp {\n  access_log off;\n  keepalive_requests 1000000;\n  server { ${listens.map((l) => `listen ${l};`).join(' ')} location / { return 200 "hello\\n"; } }\n}\n`);
  return conf;
}

/** haproxy in TCP mode on CPU 0, from `bindPort` to `targetPort` on loopback (config written into `dir`). */
export function startHaproxy(dir: string, bindPort: number, targetPort: number): ReturnType<typeof Bun.spawn> {
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, `global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nlisten p\n  bind 127.0.0.1:${bindPort}\n  server s 127.0.0.1:${targetPort}\n`);
  return spawnPinned('0', ['haproxy', '-f', cfg]);
}

/** The shipped TCP data path in this process, one local endpoint; round robin unless `policy` says otherwise. */
export function startProxy(targetPort: number, splicer?: BulkSplicer, policy?: LbPolicy): TcpServicePort {
  const balancer = new Balancer({ ring: { partitionCount: 100, replicationFactor: 10, load: 1.25 } });
  balancer.setEndpoints([{ key: `127.0.0.1:${targetPort}`, ip: '127.0.0.1', port: targetPort, nodeName: '', podName: '' }]);
  if (policy) balancer.setPolicy(policy, { enabled: false, timeoutSec: 0 });
  const proxy = new TcpServicePort({ host: '127.0.0.1', port: 0, balancer, logger: createLogger('bench', { level: 'error' }), isLocal: () => true, connectTimeoutMs: 2000, idleTimeoutSec: 0, maxAttempts: 3, splicer });
  proxy.start();
  return proxy;
}

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat (clock ticks, USER_HZ = 100). */
export async function cpuSeconds(pid: number): Promise<number> {
  const f = (await Bun.file(`/proc/${pid}/stat`).text()).split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

/** iperf3 client pinned to `cpu` against host:port; received Gbit/s. `prefix`: e.g. `ip netns exec pod`. */
export async function iperfClient(cpu: string, host: string, port: number, seconds: number, streams: number, prefix: string[] = []): Promise<number> {
  const r = spawnChild([...prefix, 'taskset', '-c', cpu, 'iperf3', '-c', host, '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J'], { stdout: 'pipe', stderr: 'pipe' });
  const out = await new Response(r.stdout).text();
  await r.exited;
  const j = JSON.parse(out) as { end?: { sum_received?: { bits_per_second: number } }; error?: string };
  if (!j.end?.sum_received) throw new Error(`iperf3: ${j.error ?? out.slice(0, 200)}`);
  return j.end.sum_received.bits_per_second / 1e9;
}

export interface WrkResult {
  rps: number;
  /** Latency percentiles in ms. */
  p50: number;
  p99: number;
}

/** wrk pinned to `cpu` (async: a proxy under test may run on this process's event loop); keep-alive or `close`; extra request headers. */
export async function wrkRun(cpu: string, url: string, conns: number, seconds: number, close: boolean, prefix: string[] = [], headers: string[] = []): Promise<WrkResult> {
  const r = spawnChild([...prefix, 'taskset', '-c', cpu, 'wrk', '-t', '1', '-c', String(conns), '-d', `${seconds}s`, '--latency', ...(close ? ['-H', 'Connection: close'] : []), ...headers.flatMap((h) => ['-H', h]), url], { stdout: 'pipe', stderr: 'pipe' });
  const [out, err] = await Promise.all([new Response(r.stdout).text(), new Response(r.stderr).text()]);
  await r.exited;
  const ms = (v: string | undefined) => (!v ? NaN : v.endsWith('us') ? parseFloat(v) / 1000 : v.endsWith('ms') ? parseFloat(v) : parseFloat(v) * 1000);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
  if (!rps) throw new Error(`wrk against ${url} failed: ${out}${err}`);
  return { rps, p50: ms(/^\s+50%\s+(\S+)/m.exec(out)?.[1]), p99: ms(/^\s+99%\s+(\S+)/m.exec(out)?.[1]) };
}

/** What dnsperf printed: queries per second, average latency, queries it gave up on; throws if it measured nothing. */
export function parseDnsperf(out: string, err = ''): { qps: number; avgMs: number; lost: number } {
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
  if (!qps) throw new Error(`dnsperf failed:\n${out}\n${err}`);
  const avgMs = Number(/Average Latency \(s\):\s+([\d.]+)/.exec(out)?.[1] ?? 0) * 1000;
  const lost = Number(/Queries lost:\s+(\d+)/.exec(out)?.[1] ?? 0);
  return { qps, avgMs, lost };
}
