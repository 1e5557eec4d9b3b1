#!/usr/bin/env bun
/**
 * The tunnel across NATs, in the network-namespace lab of test/fixtures/natlab.ts (needs root, iperf3, curl; wrk
 * optional): a client in LAN A reaches a service in LAN B through its cluster IP, on the relayed path (hard NATs:
 * punching fails) and on the punched direct path (drop NATs). Baseline, same run: plain TCP from LAN A to a
 * public host on the WAN (the same NAT and veth hops, no tunnel).
 *   - iperf3 1 and 4 streams; HTTP with wrk (keep-alive and new connection per request) when wrk is present;
 *   - time to first byte: the first request to a new peer (relayed), and the time until the path is direct.
 * Usage: sudo bun bench/tunnel-nat.ts [--seconds=5]
 */
import { startTunnelLab, type TunnelLab } from '../test/fixtures/natlab.ts';
import { onExit, spawnChild } from './children.ts';

const seconds = Number(process.argv.find((a) => a.startsWith('--seconds='))?.split('=')[1] ?? 5);
const log = (s: string) => process.stderr.write(s + '\n');
if (process.getuid?.() !== 0) {
  log('needs root (network namespaces)');
  process.exit(1);
}
for (const t of ['iperf3', 'curl', 'ip', 'iptables', 'nft']) if (!Bun.which(t)) { log(`needs ${t}`); process.exit(1); }
const hasWrk = !!Bun.which('wrk');

async function iperf(l: TunnelLab, host: string, port: number, streams: number): Promise<number> {
  const r = await l.lab.exec('ha', ['iperf3', '-c', host, '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J']);
  const j = JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second: number } }; error?: string };
  if (!j.end?.sum_received) throw new Error(`iperf3 to ${host}:${port}: ${j.error ?? r.stderr}`);
  return j.end.sum_received.bits_per_second / 1e9;
}

async function wrk(l: TunnelLab, close: boolean): Promise<{ rps: number; p50: string; p99: string }> {
  const r = await l.lab.exec('ha', ['wrk', '-t', '1', '-c', '20', '-d', `${seconds}s`, '--latency', ...(close ? ['-H', 'Connection: close'] : []), 'http://10.96.5.1/']);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? 0);
  return { rps, p50: /^\s+50%\s+(\S+)/m.exec(r.stdout)?.[1] ?? '?', p99: /^\s+99%\s+(\S+)/m.exec(r.stdout)?.[1] ?? '?' };
}

const rows: Record<string, unknown>[] = [];
for (const [kind, path] of [['reset', 'relayed'], ['drop', 'punched']] as const) {
  const l = await startTunnelLab(kind, { logLevel: 'warn' });
  // On Ctrl-C or SIGTERM l.down() does not run: kill what runs in the lab's namespaces and delete them here.
  onExit(() => {
    for (const ns of Object.values(l.lab.ns)) {
      const pids = Bun.spawnSync(['ip', 'netns', 'pids', ns]).stdout.toString().split(/\s+/).filter(Boolean);
      for (const pid of pids) try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ }
      Bun.spawnSync(['ip', 'netns', 'del', ns], { stderr: 'ignore' });
    }
  });
  const servers = [
    spawnChild([...l.lab.prefix('hb'), 'iperf3', '-s', '-p', '5201'], { stdout: Bun.file('/dev/null'), stderr: Bun.file('/dev/null') }),
    spawnChild([...l.lab.prefix('r1'), 'iperf3', '-s', '-p', '5202'], { stdout: Bun.file('/dev/null'), stderr: Bun.file('/dev/null') }),
  ];
  try {
    await Bun.sleep(300);
    // Time to first byte to a new peer: the first request crosses a relay (dial, reservation, handshakes).
    const first = await l.lab.exec('ha', ['curl', '-s', '-o', '/dev/null', '-m', '10', '-w', '%{time_starttransfer}', 'http://10.96.5.1/']);
    const ttfbFirst = Number(first.stdout) * 1000;
    const t0 = performance.now();
    let directAfter: number | null = null;
    if (path === 'punched') {
      for (let i = 0; i < 100; i++) {
        const st = JSON.parse((await l.lab.exec('ha', ['curl', '-s', 'http://127.0.0.1:10551/status'])).stdout) as { tunnel: { peers: { node: string; path: string }[] } };
        if (st.tunnel.peers.find((p) => p.node === 'hb')?.path === 'direct') {
          directAfter = performance.now() - t0 + ttfbFirst;
          break;
        }
        await Bun.sleep(50);
      }
      if (directAfter === null) throw new Error('the path never became direct');
    } else {
      await Bun.sleep(2000); // let punching try and fail
    }
    const warm = await l.lab.exec('ha', ['curl', '-s', '-o', '/dev/null', '-w', '%{time_starttransfer}', 'http://10.96.5.1/']);
    const row: Record<string, unknown> = { path, ttfbFirstMs: ttfbFirst, directAfterMs: directAfter, ttfbWarmMs: Number(warm.stdout) * 1000 };
    for (const streams of [1, 4]) {
      const base = await iperf(l, '10.99.0.11', 5202, streams);
      const tun = await iperf(l, '10.96.5.3', 5201, streams);
      row[`iperf${streams}`] = { baseline: base, tunnel: tun, ratio: tun / base };
      log(`${path}: iperf3 ${streams} stream(s): plain TCP across the NAT ${base.toFixed(2)} Gbit/s, tunnel ${tun.toFixed(2)} Gbit/s (${(tun / base).toFixed(3)})`);
    }
    if (hasWrk) {
      for (const close of [false, true]) {
        const w = await wrk(l, close);
        row[close ? 'httpNewConn' : 'httpKeepAlive'] = w;
        log(`${path}: HTTP ${close ? 'new connection per request' : 'keep-alive'}: ${w.rps.toFixed(0)} req/s, p50 ${w.p50}, p99 ${w.p99}`);
        if (close) await Bun.sleep(2000);
      }
    }
    log(`${path}: first response from a new peer ${ttfbFirst.toFixed(0)} ms${directAfter ? `, direct path after ${directAfter.toFixed(0)} ms` : ''}; warm new connection ${(Number(warm.stdout) * 1000).toFixed(1)} ms`);
    rows.push(row);
  } finally {
    for (const s of servers) s.kill();
    await l.down();
  }
}
console.log(JSON.stringify(rows, null, 2));
