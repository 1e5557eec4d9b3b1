#!/usr/bin/env bun
/**
 * Foundation figures for docs/benchmarks.md, measured on compiled binaries:
 *   - binary size (x64, arm64; xz-compressed)
 *   - start-up time to /readyz, plain build vs minify+bytecode (median of N starts)
 *   - idle RSS after start
 *   - end-to-end catalog latency: object created in the Kubernetes API → visible at /debug/catalog
 * Usage: bun bench/foundation.ts [--runs=15] [--bin=FILE]
 *   --bin: measure this binary (or any executable taking the agent's arguments) instead of building three; the
 *          sizes and the plain/bytecode comparison are then left out.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { FakeApiServer } from '../test/fixtures/apiserver.ts';
import { freePort } from '../test/helpers.ts';
import { spawnChild } from './children.ts';

const root = resolve(import.meta.dir, '..');
const runs = Number(process.argv.find((a) => a.startsWith('--runs='))?.slice(7) ?? 15);
const given = process.argv.find((a) => a.startsWith('--bin='))?.slice(6);
const dir = mkdtempSync(join(tmpdir(), 'edgemesh-bench-'));
const log = (s: string) => process.stderr.write(s + '\n');
/**
 * Modules on loopback: a config file without them would take the edge defaults, DNS on 169.254.96.16:53, which
 * as root creates the bridge and binds the host's port 53 (a node's real DNS address).
 */
const loopback = async () => `modules:\n  edgeDNS: { enable: true, listenAddress: 127.0.0.1, listenPort: ${await freePort()} }\n  edgeProxy: { enable: true, listenAddress: 127.0.0.1, interception: none }\n`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

function build(out: string, extra: string[]): void {
  const r = Bun.spawnSync([process.execPath, join(root, 'scripts/build.ts'), `--outfile=${out}`, ...extra], { stderr: 'pipe' });
  if (r.exitCode !== 0) throw new Error(`build failed: ${r.stderr}`);
}

function xzSize(path: string): number {
  const r = Bun.spawnSync(['sh', '-c', `xz -6 -T2 -c '${path}' | wc -c`]);
  return Number(r.stdout.toString().trim());
}

async function startToReady(bin: string, args: string[]): Promise<{ ms: number; proc: ReturnType<typeof Bun.spawn>; admin: string }> {
  const port = await freePort();
  const admin = `127.0.0.1:${port}`;
  const cfg = join(dir, `cfg-${port}.yaml`);
  writeFileSync(cfg, `commonConfig: { stateDir: ${join(dir, `state-${port}`)}, adminAddress: ${admin} }\n${await loopback()}`);
  const t0 = performance.now();
  const proc = spawnChild([bin, 'agent', '--config', cfg, '--node-name', 'bench', ...args], { stdout: 'ignore', stderr: 'ignore' });
  for (;;) {
    try {
      const r = await fetch(`http://${admin}/readyz`);
      if (r.status === 200) return { ms: performance.now() - t0, proc, admin };
    } catch {}
    await Bun.sleep(1);
    if (performance.now() - t0 > 10_000) throw new Error('agent did not become ready');
  }
}

function rssMiB(pid: number): number {
  const status = require('node:fs').readFileSync(`/proc/${pid}/status`, 'utf8') as string;
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

try {
  const catalog = join(dir, 'catalog.yaml');
  writeFileSync(catalog, 'apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}\n');
  let fast = join(dir, 'edgemesh');
  let sizes: Record<string, number> | null = null;
  const variants: [string, string][] = [];
  if (given) {
    fast = resolve(given);
    variants.push(['given', fast]);
    log(`measuring ${fast}`);
  } else {
    const plain = join(dir, 'edgemesh-plain'), arm = join(dir, 'edgemesh-arm64');
    log('building x64 (minify+bytecode), x64 plain, arm64…');
    build(fast, []);
    build(plain, ['--plain']);
    build(arm, ['--target=bun-linux-arm64']);
    sizes = { x64: Bun.file(fast).size, arm64: Bun.file(arm).size, x64xz: xzSize(fast), arm64xz: xzSize(arm) };
    const mib = (b: number) => (b / 1024 / 1024).toFixed(1);
    log(`size: x64 ${mib(sizes.x64!)} MiB (xz ${mib(sizes.x64xz!)}), arm64 ${mib(sizes.arm64!)} MiB (xz ${mib(sizes.arm64xz!)})`);
    variants.push(['plain', plain], ['bytecode', fast]);
  }

  const startup: Record<string, number[]> = Object.fromEntries(variants.map(([name]) => [name, []]));
  for (let i = 0; i < runs; i++) {
    for (const [name, bin] of variants) {
      const r = await startToReady(bin, ['--catalog', catalog]);
      startup[name]!.push(r.ms);
      r.proc.kill('SIGTERM');
      await r.proc.exited;
    }
  }
  const startupMs = Object.fromEntries(variants.map(([name]) => [name, median(startup[name]!)]));
  log(`start-up to /readyz (file catalog), median of ${runs}: ${variants.map(([name]) => `${name} ${startupMs[name]!.toFixed(0)} ms`).join(', ')}`);

  const api = new FakeApiServer();
  await api.start();
  for (let i = 0; i < 1000; i++) api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: `s${i}`, namespace: `ns${i % 20}` }, spec: { clusterIP: `10.96.${i >> 8}.${i & 255}`, ports: [{ port: 80 }] } });
  const admin = `127.0.0.1:${await freePort()}`;
  const cfg = join(dir, 'kube.yaml');
  writeFileSync(cfg, `commonConfig: { stateDir: ${join(dir, 'kube-state')}, adminAddress: ${admin} }\nkubeAPIConfig: { master: ${api.url} }\n${await loopback()}`);
  const t0 = performance.now();
  const proc = spawnChild([fast, 'agent', '--config', cfg, '--node-name', 'bench'], { stdout: 'ignore', stderr: 'inherit' });
  for (;;) {
    try { if ((await fetch(`http://${admin}/readyz`)).status === 200) break; } catch {}
    await Bun.sleep(1);
    if (performance.now() - t0 > 10_000) throw new Error('agent did not sync with the API');
  }
  log('synced with the API');
  const kubeReadyMs = performance.now() - t0;
  await Bun.sleep(5000);
  const idleFile = await startToReady(fast, ['--catalog', catalog]);
  await Bun.sleep(5000);
  const rss = { file: rssMiB(idleFile.proc.pid), kube1000: rssMiB(proc.pid) };
  idleFile.proc.kill('SIGTERM');
  log(`idle RSS after 5 s: file catalog ${rss.file.toFixed(1)} MiB, Kubernetes source with 1,000 services ${rss.kube1000.toFixed(1)} MiB; start-up to /readyz with 1,000 services from the API: ${kubeReadyMs.toFixed(0)} ms`);

  const e2e: number[] = [];
  for (let i = 0; i < 50; i++) {
    const name = `new-${i}`;
    const t = performance.now();
    api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default' }, spec: { clusterIP: `10.97.0.${i + 1}`, ports: [{ port: 80 }] } });
    for (;;) {
      const c = (await (await fetch(`http://${admin}/debug/catalog`)).json()) as { services: { name: string }[] };
      if (c.services.some((s) => s.name === name)) break;
      if (performance.now() - t > 10_000) throw new Error(`${name} never appeared`);
    }
    e2e.push(performance.now() - t);
  }
  log(`API create → visible at /debug/catalog (1,000 services, polling): p50 ${median(e2e).toFixed(1)} ms, p99 ${pct(e2e, 99).toFixed(1)} ms`);
  proc.kill('SIGTERM');
  await proc.exited;
  await api.stop();
  console.log(JSON.stringify({ sizes, startupMs, rssMiB: rss, kubeReadyMs, e2eMs: { p50: median(e2e), p99: pct(e2e, 99) } }, null, 2));
} finally {
  // Every agent started here is killed however the script ends (children.ts), so none is left holding a port.
  rmSync(dir, { recursive: true, force: true });
}
