/**
 * `edgemesh bench`: profiles this node. Scenarios live in bench/ (scenarios.ts lists them); this file runs them
 * with their repeats, shows progress on a terminal, and writes the report (bench/report.ts: text, --json, an
 * HTML page with --report, a comparison with --compare). Exit codes: 0 done, 1 a scenario failed, 2 usage,
 * 3 --compare found a regression.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { EdgeMeshError, describeError } from '../errors.ts';
import { SCENARIOS, type BenchContext, type RawFigure, type Scenario } from '../../bench/scenarios.ts';
import { renderHtml } from '../../bench/html.ts';
import { type BenchReport, BusyMonitor, type Change, type ScenarioReport, compareReports, formatComparison, formatText, histogram, metric, newReport, parseReport } from '../../bench/report.ts';

export interface BenchOptions {
  list?: boolean;
  json?: boolean;
  report?: string;
  compare?: string;
  only?: string;
  repeat?: string;
  duration?: string;
  connections?: string;
  size?: string;
}

function numberOption(name: string, raw: string | undefined, def: number, min: number, max: number, integer: boolean): number {
  if (raw === undefined) return def;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new EdgeMeshError('USAGE', `--${name} ${JSON.stringify(raw)}: expected ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}`);
  }
  return v;
}

/** The live line on a terminal: scenario, repeat, elapsed time, what runs and its figure so far. */
class Progress {
  private line = { head: '', what: '', figure: '' };
  private t0 = performance.now();
  private last = 0;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly tty: boolean) {}

  begin(head: string): void {
    if (!this.tty) return;
    this.line = { head, what: '', figure: '' };
    this.t0 = performance.now();
    this.timer ??= setInterval(() => this.draw(true), 250);
    this.timer.unref?.();
    this.draw(true);
  }

  update(what: string, figure = ''): void {
    if (!this.tty) return;
    this.line.what = what;
    this.line.figure = figure;
    this.draw(false);
  }

  private draw(force: boolean): void {
    const now = performance.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    const secs = ((now - this.t0) / 1000).toFixed(1);
    const text = `${this.line.head} ${secs} s  ${this.line.what}${this.line.figure ? `: ${this.line.figure}` : ''}`;
    const width = process.stderr.columns || 100;
    process.stderr.write(`\r\x1b[2K${text.slice(0, width - 1)}`);
  }

  end(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.tty) process.stderr.write('\r\x1b[2K');
  }
}

/** Which engines this node would run: shown in the report's node facts. */
async function engines(): Promise<Record<string, string>> {
  const { sodium } = await import('../tunnel/security/cipher.ts');
  const s = sodium();
  const fw = [Bun.which('nft') ? 'nftables' : '', Bun.which('iptables') ? 'iptables' : ''].filter(Boolean);
  return {
    'tunnel ciphers': 'error' in s ? 'pure JS (libsodium not loadable)' : 'libsodium',
    firewall: fw.length ? fw.join(', ') : 'none (no interception possible)',
    conntrack: Bun.which('conntrack') ? 'conntrack tool installed' : 'conntrack tool missing (stale UDP flows are not flushed)',
  };
}

/** The repeat whose figure is the median one: its histogram and series stand for the metric. */
function medianIndex(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return xs.indexOf(sorted[(xs.length - 1) >> 1]!);
}

async function runScenario(s: Scenario, index: number, total: number, opts: { repeat: number; duration: number; connections: number; size: number }, progress: Progress): Promise<ScenarioReport> {
  const t0 = performance.now();
  const report: ScenarioReport = { id: s.id, description: s.description, status: 'ok', reason: null, facts: {}, metrics: [], seconds: 0 };
  const why = await s.unavailable?.();
  if (why) return { ...report, status: 'skipped', reason: why };
  const repeats: RawFigure[][] = [];
  for (let r = 0; r < opts.repeat; r++) {
    progress.begin(`[${index}/${total} ${s.id}${opts.repeat > 1 ? `, repeat ${r + 1}/${opts.repeat}` : ''}]`);
    const ctx: BenchContext = { ...opts, progress: (what, figure) => progress.update(what, figure), fact: (k, v) => { report.facts[k] = v; } };
    try {
      repeats.push(await s.run(ctx));
    } catch (err) {
      progress.end();
      return { ...report, status: 'failed', reason: `${describeError(err)} (repeat ${r + 1}); run \`edgemesh bench ${s.id}\` alone to see whether it fails again`, seconds: (performance.now() - t0) / 1000 };
    }
  }
  progress.end();
  for (const first of repeats[0]!) {
    const all = repeats.map((figs) => figs.find((f) => f.id === first.id)).filter((f): f is RawFigure => !!f);
    const mid = all[medianIndex(all.map((f) => f.value))]!;
    report.metrics.push(metric({
      id: first.id, label: first.label, unit: first.unit, better: first.better,
      samples: all.map((f) => f.value),
      baseline: first.baseline ? { label: first.baseline.label, samples: all.map((f) => f.baseline?.value ?? NaN).filter(Number.isFinite) } : undefined,
      histogram: mid.latencies?.length ? histogram(mid.latencies) : undefined,
      series: mid.series,
    }));
  }
  report.seconds = Number(((performance.now() - t0) / 1000).toFixed(1));
  return report;
}

export async function runBench(names: string[], o: BenchOptions): Promise<void> {
  if (o.list) {
    for (const s of SCENARIOS) process.stdout.write(`${s.id.padEnd(12)} ${s.description}\n`);
    return;
  }
  const wanted = [...names, ...(o.only ? o.only.split(',').map((x) => x.trim()).filter(Boolean) : [])];
  const unknown = wanted.filter((n) => !SCENARIOS.some((s) => s.id === n));
  if (unknown.length) throw new EdgeMeshError('USAGE', `unknown scenario ${unknown.join(', ')}; available: ${SCENARIOS.map((s) => s.id).join(', ')}`);
  const chosen = wanted.length ? SCENARIOS.filter((s) => wanted.includes(s.id)) : SCENARIOS;
  const opts = {
    repeat: numberOption('repeat', o.repeat, 3, 1, 50, true),
    duration: numberOption('duration', o.duration, 1, 0.05, 600, false),
    connections: numberOption('connections', o.connections, 8, 1, 1000, true),
    size: numberOption('size', o.size, 64, 2, 65536, true),
  };
  // Read the old report first: a wrong path should not cost a whole run.
  const old = o.compare ? oldReport(o.compare) : null;
  const report = newReport({ ...opts, only: chosen.map((s) => s.id) }, await engines());
  const busy = new BusyMonitor();
  busy.begin();
  const progress = new Progress(!!process.stderr.isTTY);
  for (const [i, s] of chosen.entries()) report.scenarios.push(await runScenario(s, i + 1, chosen.length, opts, progress));
  report.busy = busy.end(report.node.cores);
  report.finishedAt = new Date().toISOString();
  const changes: Change[] | null = old ? compareReports(old, report) : null;
  if (o.json) process.stdout.write(JSON.stringify(changes ? { ...report, comparison: { against: o.compare, changes } } : report, null, 2) + '\n');
  else {
    process.stdout.write(formatText(report));
    if (changes) process.stdout.write('\n' + formatComparison(changes, o.compare!));
  }
  if (report.busy.warning && o.json) process.stderr.write(`bench: ${report.busy.warning}\n`);
  if (o.report) {
    try {
      writeFileSync(o.report, renderHtml(report, changes ? { against: o.compare!, list: changes } : undefined));
    } catch (err) {
      throw new EdgeMeshError('FILE_WRITE', `cannot write the report to ${o.report}: ${describeError(err)}`);
    }
    process.stderr.write(`bench: report written to ${o.report}\n`);
  }
  if (report.scenarios.some((s) => s.status === 'failed')) process.exitCode = 1;
  else if (changes?.some((c) => c.verdict === 'REGRESSED')) process.exitCode = 3;
}

function oldReport(path: string): BenchReport {
  try {
    return parseReport(readFileSync(path, 'utf8'), path);
  } catch (err) {
    throw new EdgeMeshError('USAGE', `--compare ${path}: ${describeError(err)}`);
  }
}
