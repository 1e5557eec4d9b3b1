/**
 * A minimal Prometheus registry (text format 0.0.4). Modules get the registry injected and create their own
 * series; the admin server renders it at /metrics. Names follow Prometheus style: edgemesh_<module>_<what>_<unit>.
 */
type Labels = Record<string, string>;

const labelKey = (l: Labels) => Object.keys(l).sort().map((k) => `${k}="${l[k]!.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',');

interface Series {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  render(): string[];
}

/** One labelled value of a counter, for hot paths: `slot.v += n` without rebuilding the label key. */
export interface CounterSlot {
  v: number;
}

export class Counter implements Series {
  readonly type = 'counter';
  private values = new Map<string, CounterSlot>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels = {}, by = 1): void {
    this.slot(labels).v += by;
  }
  /** The value for `labels`, to keep and increment directly. */
  slot(labels: Labels = {}): CounterSlot {
    const k = labelKey(labels);
    let s = this.values.get(k);
    if (!s) this.values.set(k, (s = { v: 0 }));
    return s;
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels))?.v ?? 0;
  }
  render(): string[] {
    if (this.values.size === 0) return [`${this.name} 0`];
    return [...this.values].map(([k, s]) => `${this.name}${k ? `{${k}}` : ''} ${s.v}`);
  }
}

export class Gauge implements Series {
  readonly type: 'gauge' | 'counter' = 'gauge';
  private values = new Map<string, number | (() => number)>();
  constructor(readonly name: string, readonly help: string) {}
  set(value: number | (() => number), labels: Labels = {}): void {
    this.values.set(labelKey(labels), value);
  }
  render(): string[] {
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ''} ${typeof v === 'function' ? v() : v}`);
  }
}

/** A counter whose value a module already keeps (read at scrape time), exported with TYPE counter. */
export class CounterFunc extends Gauge {
  override readonly type = 'counter' as const;
}

export class Histogram implements Series {
  readonly type = 'histogram';
  private counts: number[];
  private sum = 0;
  private n = 0;
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {
    this.counts = buckets.map(() => 0);
  }
  observe(v: number): void {
    this.sum += v;
    this.n++;
    for (let i = 0; i < this.buckets.length; i++) if (v <= this.buckets[i]!) this.counts[i]!++;
  }
  render(): string[] {
    const lines = this.buckets.map((b, i) => `${this.name}_bucket{le="${b}"} ${this.counts[i]}`);
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.n}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.n}`);
    return lines;
  }
}

export class MetricsRegistry {
  private series = new Map<string, Series>();
  private collectors: (() => Promise<void>)[] = [];
  /**
   * Work to do before a scrape renders: reading values that live outside the process (the kernel's rule
   * counters). Each is given at most 2 s; one that fails or is late leaves its last values.
   */
  beforeRender(fn: () => Promise<void>): void {
    this.collectors.push(fn);
  }
  async collect(): Promise<void> {
    await Promise.all(this.collectors.map((fn) => Promise.race([fn().catch(() => {}), Bun.sleep(2000)])));
  }
  private add<T extends Series>(s: T): T {
    const existing = this.series.get(s.name);
    if (existing) return existing as T;
    this.series.set(s.name, s);
    return s;
  }
  counter(name: string, help: string): Counter {
    return this.add(new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.add(new Gauge(name, help));
  }
  /** A monotonically increasing value read from a function at scrape time. */
  counterFrom(name: string, help: string): CounterFunc {
    return this.add(new CounterFunc(name, help));
  }
  histogram(name: string, help: string, buckets: number[]): Histogram {
    return this.add(new Histogram(name, help, buckets));
  }
  render(): string {
    const out: string[] = [];
    for (const s of this.series.values()) out.push(`# HELP ${s.name} ${s.help}`, `# TYPE ${s.name} ${s.type}`, ...s.render());
    return out.join('\n') + '\n';
  }
}
