/**
 * `edgemesh bench` as an operator uses it: one run's JSON report (schema edgemesh-bench/1: node facts, stable
 * metric ids, units as fields, baselines and ratios named the same everywhere, repeats with their spread), the
 * HTML page of the same run holding the same figures, --compare marking a planted regression, the progress line
 * on a terminal and not in a pipe, and usage errors that cost no run. Real sockets throughout, short durations.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchReport } from '../bench/report.ts';
import { MAIN, runCli, tempDir } from './helpers.ts';

const t = tempDir('edgemesh-benchcli-');
afterAll(() => t.cleanup());
const jsonPath = join(t.path, 'run.json');
const htmlPath = join(t.path, 'run.html');
let report: BenchReport;
let stderr = '';

beforeAll(async () => {
  const r = await runCli(['bench', 'dns', 'proxy', 'tunnel', 'ciphers', '--json', '--report', htmlPath, '--repeat', '2', '--duration', '0.2']);
  stderr = r.stderr;
  if (r.code !== 0) throw new Error(`bench failed (${r.code}): ${r.stderr}\n${r.stdout.slice(0, 4000)}`);
  writeFileSync(jsonPath, r.stdout);
  report = JSON.parse(r.stdout) as BenchReport;
}, 180_000);

describe('edgemesh bench: the report', () => {
  test('JSON: schema, version, node facts and time', () => {
    expect(report.schema).toBe('edgemesh-bench/1');
    expect(report.edgemesh.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(report.node.arch).toBe(process.arch);
    expect(report.node.cores).toBeGreaterThan(0);
    expect(report.node.kernel.length).toBeGreaterThan(0);
    expect(report.node.cpuModel.length).toBeGreaterThan(0);
    expect(Object.keys(report.node.engines)).toEqual(['tunnel ciphers', 'firewall', 'conntrack']);
    expect(Date.parse(report.finishedAt)).toBeGreaterThanOrEqual(Date.parse(report.startedAt));
    expect(report.options).toMatchObject({ repeat: 2, duration: 0.2 });
    expect(typeof report.busy.othersCpuPct).toBe('number');
    // Not a terminal: no progress line, only the report's own note.
    expect(stderr).not.toContain('\x1b[2K');
  });

  test('every figure: a stable id, its unit, which way is better, two repeats, and its same-run baseline and ratio', () => {
    const ids = report.scenarios.flatMap((s) => s.metrics.map((m) => m.id));
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ['dns.qps', 'dns.latency.p50', 'proxy.tcp.bulk', 'proxy.tcp.rtt.p99', 'proxy.http.keepalive', 'proxy.http.newconn', 'proxy.udp.rate', 'tunnel.tcp.bulk', 'tunnel.tcp.rtt.p50']) expect(ids).toContain(id);
    for (const s of report.scenarios.filter((x) => x.status === 'ok')) {
      for (const m of s.metrics) {
        expect(m.id).toMatch(/^[a-z0-9]+(\.[a-z0-9]+)+$/);
        expect(m.unit).not.toBe('');
        expect(m.label).not.toMatch(/\(.*(µs|MB\/s)\)/); // the unit is a field, not prose
        expect(['higher', 'lower']).toContain(m.better);
        expect(m.samples.length).toBe(2);
        expect(m.value).toBeGreaterThan(0);
        expect(m.min).toBeLessThanOrEqual(m.value);
        expect(m.max).toBeGreaterThanOrEqual(m.value);
        if (m.baseline) {
          expect(m.baseline.samples.length).toBe(2);
          expect(m.ratio).toBeCloseTo(m.value / m.baseline.value, 2);
        }
      }
    }
    const proxy = report.scenarios.find((s) => s.id === 'proxy')!;
    expect(proxy.facts['bulk path']).toBeDefined();
    expect(proxy.metrics.find((m) => m.id === 'proxy.tcp.bulk')!.series!.points.length).toBeGreaterThan(0);
    expect(report.scenarios.find((s) => s.id === 'dns')!.metrics.find((m) => m.id === 'dns.latency.p50')!.histogram!.buckets.length).toBeGreaterThan(0);
    expect(report.scenarios.find((s) => s.id === 'tunnel')!.facts.encryption).toContain('/tls/1.0.0');
  });

  test('the HTML page of the same run holds every figure, its bars, histograms and series, and fetches nothing', () => {
    const html = readFileSync(htmlPath, 'utf8');
    expect(html).toStartWith('<!doctype html>');
    expect(html).toContain('name="viewport"');
    expect(html).not.toMatch(/<script|<link|\bsrc=|url\(|https?:\/\//i);
    for (const s of report.scenarios) {
      for (const m of s.metrics) {
        const row = new RegExp(`<tr data-metric="${m.id.replaceAll('.', '\\.')}" data-value="([^"]+)"(?: data-baseline="([^"]+)")?`).exec(html);
        expect(row).not.toBeNull();
        expect(Number(row![1])).toBe(m.value);
        if (m.baseline) {
          expect(Number(row![2])).toBe(m.baseline.value);
          // The bars chart: our value and the baseline's, drawn.
          const svg = new RegExp(`<svg class="bars"[^>]*data-metric="${m.id.replaceAll('.', '\\.')}">(.*?)</svg>`).exec(html);
          expect(svg![1]).toContain(`data-value="${m.value}"`);
          expect(svg![1]).toContain(`data-baseline="${m.baseline.value}"`);
        }
        if (m.histogram) {
          const counts = [...new RegExp(`data-histogram="${m.id.replaceAll('.', '\\.')}">(.*?)</svg>`).exec(html)![1]!.matchAll(/data-count="(\d+)"/g)].map((x) => Number(x[1]));
          expect(counts).toEqual(m.histogram.buckets.map((b) => b.count));
        }
        if (m.series) expect(html).toContain(`data-series="${m.id}"`);
      }
    }
  });
});

describe('edgemesh bench --compare', () => {
  test('a planted regression is marked (exit 3), a planted gain is not', async () => {
    const old = structuredClone(report);
    const dns = old.scenarios.find((s) => s.id === 'dns')!;
    // The old run was "three times better" at queries/s and "three times worse" at p50 latency.
    const qps = dns.metrics.find((m) => m.id === 'dns.qps')!;
    qps.ratio = qps.ratio! * 3;
    const p50 = dns.metrics.find((m) => m.id === 'dns.latency.p50')!;
    p50.ratio = p50.ratio! * 3;
    const oldPath = join(t.path, 'old.json');
    writeFileSync(oldPath, JSON.stringify(old));
    const r = await runCli(['bench', 'dns', '--compare', oldPath, '--repeat', '1', '--duration', '0.2']);
    expect(r.code).toBe(3);
    const line = (id: string) => r.stdout.split('\n').find((l) => l.includes(`| dns | ${id} |`)) ?? '';
    expect(line('queries/s (64 outstanding, one client)')).toContain('REGRESSED');
    expect(line('latency p50')).toContain('better');
    expect(line('latency p50')).not.toContain('REGRESSED');
    expect(r.stdout).toMatch(/\d+ regressions? \(worse by more than 10%/);
    // The same comparison in the JSON report.
    const j = await runCli(['bench', 'dns', '--json', '--compare', oldPath, '--repeat', '1', '--duration', '0.2']);
    const cmp = (JSON.parse(j.stdout) as { comparison: { changes: { id: string; verdict: string }[] } }).comparison.changes;
    expect(cmp.find((c) => c.id === 'dns.qps')!.verdict).toBe('REGRESSED');
  }, 60_000);

  test('the verdicts: within 2% same, worse within the repeats\' spread or 10% is noise, beyond both a regression', async () => {
    const { compareReports } = await import('../bench/report.ts');
    const at = (ratio: number, spread: number, better: 'higher' | 'lower' = 'higher') => {
      const r = structuredClone(report);
      r.scenarios = [{ ...r.scenarios[0]!, metrics: [{ ...r.scenarios[0]!.metrics[0]!, id: 'x.y', better, ratio, spread }] }];
      return r;
    };
    const verdict = (old: BenchReport, now: BenchReport) => compareReports(old, now)[0]!.verdict;
    expect(verdict(at(1, 0), at(1.01, 0))).toBe('same');
    expect(verdict(at(1, 0), at(0.95, 0))).toBe('worse');
    expect(verdict(at(1, 0), at(0.7, 0))).toBe('REGRESSED');
    expect(verdict(at(1, 0.5), at(0.7, 0.5))).toBe('worse'); // the repeats were 50% apart: 30% is noise
    expect(verdict(at(1, 0), at(1.3, 0))).toBe('better');
    expect(verdict(at(1, 0, 'lower'), at(1.3, 0, 'lower'))).toBe('REGRESSED'); // a latency ratio that grew
  });
});

describe('edgemesh bench: progress and usage', () => {
  test('on a terminal a live line shows the scenario, its repeat, the time and the figure so far', async () => {
    // script(1) gives the command a pseudo-terminal; its output is what the terminal would show.
    const p = Bun.spawn(['script', '-qec', `"${process.execPath}" "${MAIN}" bench dns --repeat 1 --duration 0.5`, '/dev/null'], { stdout: 'pipe', stderr: 'pipe' });
    const out = await new Response(p.stdout).text();
    expect(await p.exited).toBe(0);
    expect(out).toContain('\x1b[2K[1/1 dns]');
    expect(out).toMatch(/\[1\/1 dns\] \d+\.\d s {2}DNS queries: \d+ q\/s baseline/);
    expect(out).toContain('queries/s (64 outstanding, one client)');
  }, 60_000);

  test('bad options are usage errors naming the option, before anything runs', async () => {
    for (const [args, says] of [
      [['--repeat', '0'], '--repeat "0"'],
      [['--duration', 'soon'], '--duration "soon"'],
      [['--size', '1'], '--size "1"'],
      [['--only', 'dns,nope'], 'unknown scenario nope'],
      [['--compare', join(t.path, 'missing.json')], 'missing.json'],
    ] as [string[], string][]) {
      const t0 = performance.now();
      const r = await runCli(['bench', 'dns', ...args]);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toContain(says);
      expect(performance.now() - t0).toBeLessThan(5000);
    }
    const notReport = join(t.path, 'not-report.json');
    writeFileSync(notReport, JSON.stringify([{ scenario: 'dns', rows: [] }]));
    const r = await runCli(['bench', 'dns', '--compare', notReport]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('is not an edgemesh bench report');
  }, 60_000);
});
