/**
 * The report of `edgemesh bench`: one documented shape for every scenario (docs/bench.md), the node's facts, the
 * machine's business during the run, and the comparison of two reports.
 *
 * Every figure is a Metric: a stable id (`proxy.bulk`), its unit as a field, which way is better, the median of
 * its repeats with their spread, and, when the scenario measured one in the same run, a baseline (named the same
 * everywhere) with the ratio to it. Figures are compared through their ratios when they have a baseline (the
 * machine's speed cancels out), else through their values.
 */
import { readFileSync } from 'node:fs';
import { cpus, hostname, release, totalmem } from 'node:os';
import { COMMIT, VERSION } from '../src/version.ts';

export const REPORT_SCHEMA = 'edgemesh-bench/1';

export type Better = 'higher' | 'lower';

/** Log-spaced buckets of a latency distribution: `le` the upper bound (in the metric's unit), `count` samples. */
export interface Histogram {
  buckets: { le: number; count: number }[];
}

/** A figure over time, e.g. throughput per 100 ms of a bulk run: `t` in seconds from its start. */
export interface Series {
  unit: string;
  points: { t: number; value: number }[];
}

export interface Measured {
  /** Median of the repeats. */
  value: number;
  samples: number[];
  min: number;
  max: number;
  /** (max - min) / median: how far apart the repeats were. */
  spread: number;
}

export interface Metric extends Measured {
  id: string;
  label: string;
  unit: string;
  better: Better;
  /** The same figure on the baseline path, measured in the same run (a direct connection, a bare echo server). */
  baseline: (Measured & { label: string }) | null;
  /** value / baseline.value, or null without a baseline. */
  ratio: number | null;
  histogram?: Histogram;
  series?: Series;
}

export interface ScenarioReport {
  id: string;
  description: string;
  status: 'ok' | 'skipped' | 'failed';
  /** Why it was skipped or failed, and what to do. */
  reason: string | null;
  /** Facts the scenario found (the engine it ran, the bulk path), as key → value. */
  facts: Record<string, string>;
  metrics: Metric[];
  seconds: number;
}

export interface NodeFacts {
  hostname: string;
  arch: string;
  platform: string;
  kernel: string;
  cpuModel: string;
  cores: number;
  memoryMiB: number;
  bun: string;
  engines: Record<string, string>;
}

export interface Business {
  /** 1-minute load average before the run, and the highest seen during it. */
  loadBefore: number;
  loadDuringMax: number;
  /** Share of the machine's CPU (all cores) used by other processes during the run, in %. */
  othersCpuPct: number;
  /** CPU time stolen by the hypervisor during the run, % of the machine. */
  stealPct: number;
  /** Why the figures may not be this machine's best, or null. */
  warning: string | null;
}

export interface BenchReport {
  schema: typeof REPORT_SCHEMA;
  edgemesh: { version: string; commit: string };
  startedAt: string;
  finishedAt: string;
  node: NodeFacts;
  options: { repeat: number; duration: number; connections: number; size: number; only: string[] };
  busy: Business;
  scenarios: ScenarioReport[];
}

// ---- figures ----

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

const round = (x: number): number => (Math.abs(x) >= 100 ? Math.round(x) : Number(x.toPrecision(4)));

export function measured(samples: number[]): Measured {
  const value = median(samples);
  const min = Math.min(...samples);
  const max = Math.max(...samples);
  return { value: round(value), samples: samples.map(round), min: round(min), max: round(max), spread: value ? Number(((max - min) / Math.abs(value)).toFixed(3)) : 0 };
}

/** Log-spaced histogram (4 buckets per decade) of latency samples. */
export function histogram(samples: number[]): Histogram {
  const counts = new Map<number, number>();
  for (const x of samples) {
    const le = x <= 0 ? 0 : Number((10 ** (Math.ceil(Math.log10(x) * 4) / 4)).toPrecision(3));
    counts.set(le, (counts.get(le) ?? 0) + 1);
  }
  return { buckets: [...counts].sort((a, b) => a[0] - b[0]).map(([le, count]) => ({ le, count })) };
}

/**
 * One metric from the samples of its repeats (and of its baseline's, same run). The histogram and series, when
 * given, are those of the median repeat's raw data (the caller keeps them).
 */
export function metric(m: { id: string; label: string; unit: string; better: Better; samples: number[]; baseline?: { label: string; samples: number[] }; histogram?: Histogram; series?: Series }): Metric {
  const own = measured(m.samples);
  const base = m.baseline ? { label: m.baseline.label, ...measured(m.baseline.samples) } : null;
  // The ratio of medians of per-repeat ratios would hide the repeat structure; the ratio of the medians is what
  // the table shows side by side.
  const ratio = base && base.value ? Number((own.value / base.value).toFixed(3)) : null;
  return { id: m.id, label: m.label, unit: m.unit, better: m.better, ...own, baseline: base, ratio, ...(m.histogram ? { histogram: m.histogram } : {}), ...(m.series ? { series: m.series } : {}) };
}

// ---- the node ----

function cpuModel(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    return /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? /^(?:Hardware|Model|CPU part)\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  } catch {
    return cpus()[0]?.model ?? 'unknown';
  }
}

export function nodeFacts(engines: Record<string, string>): NodeFacts {
  return {
    hostname: hostname(), arch: process.arch, platform: process.platform, kernel: release(), cpuModel: cpuModel(),
    cores: cpus().length, memoryMiB: Math.round(totalmem() / 1048576), bun: Bun.version, engines,
  };
}

// ---- how busy the machine is ----

interface CpuSample { total: number; idle: number; steal: number; own: number }

function cpuSample(): CpuSample {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: the jiffies of every core together.
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const own = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  // utime stime cutime cstime (fields 14-17): this process and the children it has waited for.
  return { total, idle: f[3]! + f[4]!, steal: f[7] ?? 0, own: Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]) };
}

const loadavg = (): number => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);

/**
 * Watches the machine while the bench runs: the load before it, the highest load during it, and the CPU that
 * other processes and the hypervisor took. Linux only; elsewhere it reports nothing.
 */
export class BusyMonitor {
  private start: CpuSample | null = null;
  private loadBefore = 0;
  private loadMax = 0;
  private timer: ReturnType<typeof setInterval> | null = null;

  begin(): void {
    try {
      this.loadBefore = loadavg();
      this.loadMax = this.loadBefore;
      this.start = cpuSample();
      this.timer = setInterval(() => { this.loadMax = Math.max(this.loadMax, loadavg()); }, 1000);
      this.timer.unref?.();
    } catch {
      this.start = null;
    }
  }

  end(cores: number): Business {
    if (this.timer) clearInterval(this.timer);
    if (!this.start) return { loadBefore: 0, loadDuringMax: 0, othersCpuPct: 0, stealPct: 0, warning: null };
    const e = cpuSample();
    const total = e.total - this.start.total || 1;
    const busy = total - (e.idle - this.start.idle) - (e.steal - this.start.steal);
    const others = Math.max(0, busy - (e.own - this.start.own));
    const othersCpuPct = Number(((others / total) * 100).toFixed(1));
    const stealPct = Number((((e.steal - this.start.steal) / total) * 100).toFixed(1));
    const why: string[] = [];
    if (this.loadBefore > cores * 0.5) why.push(`the load was ${this.loadBefore} on ${cores} cores before the run`);
    if (othersCpuPct > 15) why.push(`other processes took ${othersCpuPct}% of the CPU during it`);
    if (stealPct > 5) why.push(`the hypervisor stole ${stealPct}% of the CPU`);
    return {
      loadBefore: this.loadBefore, loadDuringMax: this.loadMax, othersCpuPct, stealPct,
      warning: why.length ? `the machine was busy (${why.join('; ')}): figures may be low; compare ratios, or run again when it is quiet` : null,
    };
  }
}

export function newReport(options: BenchReport['options'], engines: Record<string, string>): BenchReport {
  return {
    schema: REPORT_SCHEMA, edgemesh: { version: VERSION, commit: COMMIT }, startedAt: new Date().toISOString(), finishedAt: '',
    node: nodeFacts(engines), options, busy: { loadBefore: 0, loadDuringMax: 0, othersCpuPct: 0, stealPct: 0, warning: null }, scenarios: [],
  };
}

/** Reads a report written with --json, refusing anything that is not one. */
export function parseReport(text: string, what: string): BenchReport {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} is not JSON (${(e as Error).message}); give a file written by \`edgemesh bench --json\``);
  }
  const rep = r as Partial<BenchReport>;
  if (rep?.schema !== REPORT_SCHEMA || !Array.isArray(rep.scenarios)) throw new Error(`${what} is not an edgemesh bench report (schema ${JSON.stringify(rep?.schema ?? null)}, expected ${REPORT_SCHEMA})`);
  return rep as BenchReport;
}

// ---- comparing two reports ----

export interface Change {
  scenario: string;
  id: string;
  label: string;
  unit: string;
  /** What is compared: the ratio to the baseline when both runs have one, else the value. */
  basis: 'ratio' | 'value';
  old: number;
  new: number;
  /** new / old - 1, signed so that positive is better. */
  change: number;
  verdict: 'better' | 'worse' | 'same' | 'REGRESSED';
}

/**
 * Each metric of `now` against the same id in `old`. A change is a regression when it is worse by more than 10%
 * and by more than the two runs' own spread (noise of the repeats); worse within that is 'worse' (noise).
 */
export function compareReports(old: BenchReport, now: BenchReport): Change[] {
  const out: Change[] = [];
  for (const s of now.scenarios) {
    const os = old.scenarios.find((x) => x.id === s.id);
    if (!os) continue;
    for (const m of s.metrics) {
      const om = os.metrics.find((x) => x.id === m.id);
      if (!om) continue;
      const basis = m.ratio !== null && om.ratio !== null ? 'ratio' : 'value';
      const a = basis === 'ratio' ? om.ratio! : om.value;
      const b = basis === 'ratio' ? m.ratio! : m.value;
      if (!a) continue;
      const raw = b / a - 1;
      const change = m.better === 'higher' ? raw : -raw;
      const noise = Math.max(0.1, m.spread, om.spread);
      const verdict = change < -noise ? 'REGRESSED' : change < -0.02 ? 'worse' : change > 0.02 ? 'better' : 'same';
      out.push({ scenario: s.id, id: m.id, label: m.label, unit: m.unit, basis, old: a, new: b, change: Number(change.toFixed(3)), verdict });
    }
  }
  return out;
}

// ---- text ----

const num = (x: number): string => (Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en-US') : String(round(x)));

export function formatText(r: BenchReport): string {
  const lines: string[] = [];
  const n = r.node;
  lines.push(`edgemesh ${r.edgemesh.version} (${r.edgemesh.commit}) on ${n.hostname}: ${n.cpuModel}, ${n.cores} cores, ${n.memoryMiB} MiB, ${n.platform}/${n.arch} ${n.kernel}, bun ${n.bun}`);
  lines.push(`engines: ${Object.entries(n.engines).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`repeats: ${r.options.repeat}, ${r.options.duration} s per measurement`);
  for (const s of r.scenarios) {
    lines.push('');
    lines.push(`${s.id}: ${s.description}${s.status === 'ok' ? '' : ` — ${s.status.toUpperCase()}: ${s.reason}`}`);
    for (const [k, v] of Object.entries(s.facts)) lines.push(`  ${k}: ${v}`);
    if (!s.metrics.length) continue;
    lines.push('  | metric | unit | value | spread | baseline | ratio |');
    lines.push('  |---|---|---:|---:|---:|---:|');
    for (const m of s.metrics) {
      lines.push(`  | ${m.label} | ${m.unit} | ${num(m.value)} | ±${(m.spread * 50).toFixed(0)}% | ${m.baseline ? `${num(m.baseline.value)} (${m.baseline.label})` : '—'} | ${m.ratio === null ? '—' : m.ratio.toFixed(2)} |`);
    }
  }
  lines.push('');
  const b = r.busy;
  lines.push(`machine: load ${b.loadBefore} before, up to ${b.loadDuringMax} during; other processes ${b.othersCpuPct}% of the CPU, steal ${b.stealPct}%`);
  if (b.warning) lines.push(`WARNING: ${b.warning}`);
  return lines.join('\n') + '\n';
}

export function formatComparison(changes: Change[], oldWhat: string): string {
  if (!changes.length) return `no metric in common with ${oldWhat}\n`;
  const lines = [`against ${oldWhat} (ratios to the same-run baseline where both have one; + is better):`, '| scenario | metric | compared | before | now | change | |', '|---|---|---|---:|---:|---:|---|'];
  for (const c of changes) lines.push(`| ${c.scenario} | ${c.label} | ${c.basis === 'ratio' ? 'ratio' : c.unit} | ${num(c.old)} | ${num(c.new)} | ${c.change >= 0 ? '+' : ''}${(c.change * 100).toFixed(1)}% | ${c.verdict === 'same' ? '' : c.verdict} |`);
  const bad = changes.filter((c) => c.verdict === 'REGRESSED').length;
  lines.push(bad ? `${bad} regression${bad > 1 ? 's' : ''} (worse by more than 10% and more than the repeats' spread)` : 'no regression');
  return lines.join('\n') + '\n';
}
