/**
 * A bench script run on a real node must leave the node as it found it: its agents listen on loopback only (a
 * config without modules would take the edge defaults and, as root, bind the host's 169.254.96.16:53), and no
 * process it started outlives it, whether it finishes, is interrupted (Ctrl-C) or is stopped (SIGTERM).
 *
 * The bench under test is bench/foundation.ts measuring an executable that runs the agent from source. Every
 * process it starts inherits a marker in its environment; after the bench ends, /proc must hold none.
 */
import { afterAll, afterEach, describe, expect, test } from 'bun:test';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MAIN, ROOT, tempDir, waitFor } from './helpers.ts';

const t = tempDir('edgemesh-benchsafety-');
const markers: string[] = [];
// A failing test must not leave its processes behind either.
afterEach(() => { for (const m of markers.splice(0)) for (const p of marked(m)) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } });
afterAll(() => t.cleanup());
const agentBin = join(t.path, 'edgemesh');
writeFileSync(agentBin, `#!/bin/sh\nexec "${process.execPath}" "${MAIN}" "$@"\n`);
chmodSync(agentBin, 0o755);

/** Processes whose environment carries `marker`. */
function marked(marker: string): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (!readFileSync(`/proc/${e}/environ`).includes(marker)) continue;
      out.push({ pid: Number(e), cmd: readFileSync(`/proc/${e}/cmdline`, 'utf8').replaceAll('\0', ' ').trim() });
    } catch { /* gone, or not ours to read */ }
  }
  return out;
}

/** Whether `pid` runs: a zombie (dead, not yet reaped by init, which is slow to do it on some machines) does not. */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0] !== 'Z';
  } catch {
    return false;
  }
}

/** Listening sockets of `pid` (local addresses), from `ss`. */
function listening(pid: number): string[] {
  const r = Bun.spawnSync(['ss', '-Hltunp'], { stdout: 'pipe' });
  return r.stdout.toString().split('\n').filter((l) => l.includes(`pid=${pid},`)).map((l) => l.trim().split(/\s+/)[4]!);
}

function startBench(marker: string): Bun.Subprocess<'ignore', 'pipe', 'pipe'> {
  markers.push(marker);
  return Bun.spawn([process.execPath, join(ROOT, 'bench/foundation.ts'), '--runs=1', `--bin=${agentBin}`], {
    env: { ...process.env, EDGEMESH_BENCH_MARK: marker },
    stdin: 'ignore', stdout: 'pipe', stderr: 'pipe',
  });
}

/** Wait for an agent of the bench (whose command line has `tag`) to listen; its pid and listening addresses. */
async function agentOf(bench: Bun.Subprocess, marker: string, tag = ' agent '): Promise<{ pid: number; addrs: string[] }> {
  return waitFor(() => {
    const a = marked(marker).find((p) => p.pid !== bench.pid && p.cmd.includes(' agent ') && p.cmd.includes(tag));
    const addrs = a ? listening(a.pid) : [];
    return a && addrs.length > 0 ? { pid: a.pid, addrs } : null;
  }, 'an agent started by the bench', 20_000, 20);
}

describe('bench scripts leave nothing behind', () => {
  test('a finished run: agents on loopback only, no process left', async () => {
    const marker = `m${randomBytes(8).toString('hex')}`;
    const bench = startBench(marker);
    const { addrs } = await agentOf(bench, marker);
    for (const a of addrs) expect(a).toStartWith('127.0.0.1:');
    const [code, out, err] = await Promise.all([bench.exited, new Response(bench.stdout).text(), new Response(bench.stderr).text()]);
    expect({ code, err: code === 0 ? '' : err }).toEqual({ code: 0, err: '' });
    const report = JSON.parse(out) as { startupMs: Record<string, number>; rssMiB: Record<string, number> };
    expect(report.startupMs.given).toBeGreaterThan(0);
    expect(report.rssMiB.file).toBeGreaterThan(0);
    expect(marked(marker)).toEqual([]);
  }, 90_000);

  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    test(`${sig} while an agent runs: the bench stops it and exits ${code}`, async () => {
      const marker = `m${randomBytes(8).toString('hex')}`;
      const bench = startBench(marker);
      // The agent synced with the API: it runs for seconds (the start-up ones end within moments anyway).
      const { pid: agent } = await agentOf(bench, marker, 'kube.yaml');
      bench.kill(sig);
      expect(await bench.exited).toBe(code);
      // SIGKILL of the agent is delivered at once; the kernel reaps it within moments.
      await waitFor(() => marked(marker).length === 0 || null, () => `processes left: ${JSON.stringify(marked(marker))}`, 3000, 20);
      expect(alive(agent)).toBe(false);
    }, 60_000);
  }
});
