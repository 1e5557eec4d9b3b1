#!/usr/bin/env bun
/**
 * Start-up and idle memory of the compiled agent with every module on (file catalog, DNS, proxy on loopback
 * without interception, tunnel with a PSK), as an operator's node starts it:
 *   - time from spawn to the first 200 of /readyz (polled every 2 ms);
 *   - the agent's own account (/status `startup`, builds that have it): ms from its process's start to the end
 *     of its start, by phase (load: runtime, code and config; catalog; tunnel; proxy; dns);
 *   - RSS 5 s after ready (idle), from /proc/PID/status.
 * With --base=DIR the same is measured for the checkout in DIR (built with its own scripts/build.ts), the two
 * alternating start by start, and the medians are printed side by side with their ratio.
 * Usage: bun bench/startup.ts [--runs=9] [--base=DIR] [--idle=5]   (no root, loopback only)
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '../test/helpers.ts';
import { spawnChild } from './children.ts';

const root = resolve(import.meta.dir, '..');
const arg = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1];
const runs = Number(arg('runs') ?? 9);
const idleSec = Number(arg('idle') ?? 5);
const baseDir = arg('base');
const log = (s: string) => process.stderr.write(s + '\n');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dir = mkdtempSync(join(tmpdir(), 'edgemesh-startup-'));
const procs: ReturnType<typeof Bun.spawn>[] = [];

function build(checkout: string, out: string): void {
  log(`building ${out} from ${checkout}`);
  const r = Bun.spawnSync([process.execPath, join(checkout, 'scripts/build.ts'), `--outfile=${out}`], { cwd: checkout, stderr: 'pipe' });
  if (r.exitCode !== 0) throw new Error(`build failed in ${checkout}: ${r.stderr.toString()}`);
}

async function config(name: string): Promise<string> {
  const d = join(dir, name);
  const [admin, dns, tunnel, backend] = [await freePort(), await freePort(), await freePort(), await freePort()];
  Bun.spawnSync(['mkdir', '-p', join(d, 'state')]);
  writeFileSync(join(d, 'psk'), randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
  writeFileSync(join(d, 'catalog.yaml'), [
    'apiVersion: v1\nkind: Service\nmetadata: { name: hello, namespace: default }\nspec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }',
    `apiVersion: v1\nkind: Endpoints\nmetadata: { name: hello, namespace: default }\nsubsets: [{ addresses: [{ ip: 127.0.0.1 }], ports: [{ name: http, port: ${backend} }] }]`,
  ].join('\n---\n'));
  const cfg = {
    commonConfig: { stateDir: join(d, 'state'), adminAddress: `127.0.0.1:${admin}` },
    catalog: { file: join(d, 'catalog.yaml') },
    modules: {
      edgeDNS: { enable: true, listenAddress: '127.0.0.1', listenPort: dns },
      edgeProxy: { enable: true, listenAddress: '127.0.0.1', interception: 'none' },
      edgeTunnel: { enable: true, listenPort: tunnel, listenInterfaces: 'lo', mdns: false, psk: { enable: true, path: join(d, 'psk') } },
    },
  };
  const path = join(d, 'config.yaml');
  writeFileSync(path, JSON.stringify(cfg));
  return `${path}|${admin}`;
}

interface Startup { ms: number; phases: Record<string, number> }

async function once(bin: string, cfg: string): Promise<{ readyMs: number; rssMiB: number; startup: Startup | null }> {
  const [path, admin] = cfg.split('|') as [string, string];
  const t0 = performance.now();
  const p = spawnChild([bin, 'agent', '--config', path, '--node-name', 'n1'], { stdout: 'ignore', stderr: 'pipe' });
  procs.push(p);
  let readyMs = -1;
  while (performance.now() - t0 < 10_000) {
    try {
      const r = await fetch(`http://127.0.0.1:${admin}/readyz`);
      if (r.status === 200) {
        readyMs = performance.now() - t0;
        break;
      }
    } catch {
      // not listening yet
    }
    await Bun.sleep(2);
  }
  if (readyMs < 0) {
    p.kill('SIGKILL');
    throw new Error(`${bin} did not become ready in 10 s: ${await new Response(p.stderr).text()}`);
  }
  let startup: Startup | null = null;
  try {
    startup = ((await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { startup?: Startup }).startup ?? null;
  } catch {
    // an older build
  }
  await Bun.sleep(idleSec * 1000);
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  p.kill('SIGTERM');
  await p.exited;
  return { readyMs, rssMiB: rss, startup };
}

try {
  const sides = [{ name: 'this', checkout: root }, ...(baseDir ? [{ name: 'base', checkout: resolve(baseDir) }] : [])];
  const bins = sides.map((s) => {
    const out = join(dir, `edgemesh-${s.name}`);
    build(s.checkout, out);
    return out;
  });
  const cfgs = await Promise.all(sides.map((s) => config(s.name)));
  const res = sides.map(() => ({ ready: [] as number[], rss: [] as number[], own: [] as Startup[] }));
  for (let i = 0; i < runs; i++) {
    // Alternate which side starts first, so a drift of the machine does not favour one.
    const order = i % 2 === 0 ? sides.map((_, j) => j) : sides.map((_, j) => j).reverse();
    for (const j of order) {
      const r = await once(bins[j]!, cfgs[j]!);
      res[j]!.ready.push(r.readyMs);
      res[j]!.rss.push(r.rssMiB);
      if (r.startup) res[j]!.own.push(r.startup);
      const own = r.startup ? ` (its own count: ${r.startup.ms} ms = ${Object.entries(r.startup.phases).map(([k, v]) => `${k} ${v}`).join(' + ')})` : '';
      log(`run ${i + 1}/${runs} ${sides[j]!.name}: ready ${r.readyMs.toFixed(0)} ms${own}, idle RSS ${r.rssMiB.toFixed(1)} MiB`);
    }
  }
  const rows = sides.map((s, j) => ({
    build: s.name, checkout: s.checkout,
    readyMsMedian: Math.round(median(res[j]!.ready)), readyMs: res[j]!.ready.map(Math.round),
    idleRssMiBMedian: Number(median(res[j]!.rss).toFixed(1)), idleRssMiB: res[j]!.rss.map((x) => Number(x.toFixed(1))),
    ...(res[j]!.own.length ? {
      ownStartupMsMedian: median(res[j]!.own.map((o) => o.ms)),
      phasesMsMedian: Object.fromEntries(Object.keys(res[j]!.own[0]!.phases).map((k) => [k, median(res[j]!.own.map((o) => o.phases[k] ?? 0))])),
    } : {}),
  }));
  const out: Record<string, unknown> = { runs, idleSec, modules: 'dns, proxy (loopback, no interception), tunnel (PSK)', rows };
  if (rows.length === 2) out.ratio = { ready: Number((rows[0]!.readyMsMedian / rows[1]!.readyMsMedian).toFixed(2)), idleRss: Number((rows[0]!.idleRssMiBMedian / rows[1]!.idleRssMiBMedian).toFixed(2)) };
  console.log(JSON.stringify(out, null, 2));
} finally {
  for (const p of procs) p.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
