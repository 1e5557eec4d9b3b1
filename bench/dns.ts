#!/usr/bin/env bun
/**
 * DNS throughput and latency: dnsperf against edgemesh and against dnsmasq serving the same records, in the
 * same run, server pinned to CPU 0 and dnsperf to CPU 1.
 *   1. service names: 1,000 services; edgemesh from its catalog, dnsmasq from an addn-hosts file;
 *   2. cached forwarded names: both forward to a third server (dnsmasq) and answer from their caches.
 * Usage: bun bench/dns.ts [--seconds=10] [--clients=10] [--rounds=3]   (needs dnsperf and dnsmasq: apt-get install dnsperf dnsmasq-base)
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '../test/helpers.ts';
import { parseDnsperf } from './tools.ts';
import { spawnChild } from './children.ts';

const root = resolve(import.meta.dir, '..');
const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const seconds = arg('seconds', 10);
const clients = arg('clients', 10);
const rounds = arg('rounds', 3);
const N = 1000;
const log = (s: string) => process.stderr.write(s + '\n');
for (const tool of ['dnsperf', 'dnsmasq', 'taskset']) {
  if (!Bun.which(tool)) {
    log(`bench/dns.ts needs ${tool}: apt-get install dnsperf dnsmasq-base util-linux`);
    process.exit(1);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'edgemesh-dnsbench-'));
const procs: ReturnType<typeof Bun.spawn>[] = [];
const ip = (i: number) => `10.96.${(i >> 8) & 255}.${i & 255}`;

function spawn(cmd: string[], cpu: string): ReturnType<typeof Bun.spawn> {
  const p = spawnChild(['taskset', '-c', cpu, ...cmd], { stdout: 'ignore', stderr: 'pipe' });
  procs.push(p);
  return p;
}

async function waitDns(port: number, name: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const r = Bun.spawnSync(['dig', '+short', '+tries=1', '+time=1', '-p', String(port), '@127.0.0.1', name]);
    if (r.stdout.toString().trim()) return;
    await Bun.sleep(50);
  }
  throw new Error(`no DNS answer on ${port} for ${name}`);
}

interface PerfResult { qps: number; avgMs: number; lost: number; p99Ms?: number }

function dnsperf(port: number, queryFile: string): PerfResult {
  const r = Bun.spawnSync(['taskset', '-c', '1', 'dnsperf', '-s', '127.0.0.1', '-p', String(port), '-d', queryFile, '-l', String(seconds), '-c', String(clients), '-q', '500', '-t', '2'], { stdout: 'pipe', stderr: 'pipe' });
  return parseDnsperf(r.stdout.toString(), r.stderr.toString());
}

try {
  // Records: a catalog for edgemesh, an addn-hosts file for dnsmasq, the same names.
  const docs: string[] = [];
  const hosts: string[] = [];
  const svcQueries: string[] = [];
  for (let i = 0; i < N; i++) {
    const ns = `ns${i % 20}`;
    docs.push(`apiVersion: v1\nkind: Service\nmetadata: {name: svc-${i}, namespace: ${ns}}\nspec: {clusterIP: ${ip(i)}, ports: [{port: 80}]}`);
    hosts.push(`${ip(i)} svc-${i}.${ns}.svc.cluster.local`);
    svcQueries.push(`svc-${i}.${ns}.svc.cluster.local A`);
  }
  writeFileSync(join(dir, 'catalog.yaml'), docs.join('\n---\n'));
  writeFileSync(join(dir, 'hosts'), hosts.join('\n') + '\n');
  writeFileSync(join(dir, 'svc.q'), svcQueries.join('\n') + '\n');
  // Forwarded names live on an origin server; both contestants forward there and cache.
  const fwdHosts: string[] = [];
  const fwdQueries: string[] = [];
  for (let i = 0; i < 200; i++) {
    fwdHosts.push(`192.0.2.${(i % 250) + 1} host-${i}.example.test`);
    fwdQueries.push(`host-${i}.example.test A`);
  }
  writeFileSync(join(dir, 'origin-hosts'), fwdHosts.join('\n') + '\n');
  writeFileSync(join(dir, 'fwd.q'), fwdQueries.join('\n') + '\n');

  const [pOrigin, pMasq, pEdge] = [await freePort(), await freePort(), await freePort()];
  const dnsmasqBase = ['dnsmasq', '--no-daemon', '--no-hosts', '--listen-address=127.0.0.1', '--bind-interfaces', '--cache-size=10000', '--local-ttl=30', `--pid-file=${join(dir, 'x.pid')}`];
  // The origin for forwarded names (CPU 1 is dnsperf's; the origin only sees cache misses).
  spawn([...dnsmasqBase.filter((a) => !a.startsWith('--pid-file')), `--pid-file=${join(dir, 'o.pid')}`, `--port=${pOrigin}`, '--no-resolv', `--addn-hosts=${join(dir, 'origin-hosts')}`, '--local=/example.test/'], '1');
  // dnsmasq: authoritative-ish for the cluster names from hosts, forwarding example.test to the origin.
  spawn([...dnsmasqBase, `--port=${pMasq}`, '--no-resolv', `--addn-hosts=${join(dir, 'hosts')}`, '--local=/cluster.local/', `--server=127.0.0.1#${pOrigin}`], '0');
  const cfg = join(dir, 'agent.yaml');
  writeFileSync(cfg, `commonConfig: { stateDir: ${join(dir, 'state')}, adminAddress: "", logLevel: warn }\ncatalog: { file: ${join(dir, 'catalog.yaml')} }\nmodules:\n  edgeDNS: { enable: true, listenAddress: 127.0.0.1, listenPort: ${pEdge}, upstreamServers: ["127.0.0.1:${pOrigin}"] }\n`);
  await waitDns(pOrigin, 'host-1.example.test');
  await waitDns(pMasq, 'svc-1.ns1.svc.cluster.local');

  const edge = spawn([process.execPath, join(root, 'src/cli/main.ts'), 'agent', '--config', cfg, '--node-name', 'bench'], '0');
  await waitDns(pEdge, 'svc-1.ns1.svc.cluster.local');
  const median = (xs: PerfResult[]) => [...xs].sort((a, b) => a.qps - b.qps)[Math.floor(xs.length / 2)]!;
  const results: Record<string, Record<string, PerfResult>> = { service: {}, forwarded: {} };
  for (const [kind, file] of [['service', 'svc.q'], ['forwarded', 'fwd.q']] as const) {
    // Warm-up: fills caches, and lets the JIT compile the hot path (dnsmasq has none to warm, but gets the same).
    for (const p of [pMasq, pEdge]) Bun.spawnSync(['dnsperf', '-s', '127.0.0.1', '-p', String(p), '-d', join(dir, file), '-l', '2', '-c', String(clients)]);
    const runs: Record<string, PerfResult[]> = { dnsmasq: [], edgemesh: [] };
    // Alternate rounds so both see the same machine conditions; report the median round of each.
    for (let round = 0; round < rounds; round++) {
      runs.dnsmasq!.push(dnsperf(pMasq, join(dir, file)));
      runs.edgemesh!.push(dnsperf(pEdge, join(dir, file)));
    }
    for (const who of ['dnsmasq', 'edgemesh'] as const) {
      const m = median(runs[who]!);
      results[kind]![who] = m;
      log(`${kind.padEnd(9)} ${who.padEnd(8)}: ${m.qps.toFixed(0)} qps (rounds: ${runs[who]!.map((r) => r.qps.toFixed(0)).join(', ')}), avg latency ${m.avgMs.toFixed(3)} ms`);
    }
  }
  const rss = Number(/VmRSS:\s+(\d+)/.exec(await Bun.file(`/proc/${edge.pid}/status`).text())?.[1] ?? 0) / 1024;
  for (const k of ['service', 'forwarded'] as const) log(`${k}: edgemesh/dnsmasq QPS ratio ${(results[k]!.edgemesh!.qps / results[k]!.dnsmasq!.qps).toFixed(2)}`);
  log(`edgemesh RSS after the run: ${rss.toFixed(1)} MiB`);
  console.log(JSON.stringify({ seconds, clients, services: N, results, edgemeshRssMiB: rss }, null, 2));
} finally {
  for (const p of procs) p.kill('SIGTERM');
  await Promise.all(procs.map((p) => p.exited));
  rmSync(dir, { recursive: true, force: true });
}
