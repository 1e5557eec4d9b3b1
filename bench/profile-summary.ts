#!/usr/bin/env bun
/**
 * Summarise a `.cpuprofile` (from `bun --cpu-prof`, e.g. an agent run by a bench with
 * BENCH_BUN_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof") by sample counts: self and inclusive share per function.
 *
 * Why not `--cpu-prof-md`: its times come from the gaps between samples, so a function sampled just before the
 * process sleeps is charged for the sleep (a benchmark's agent idles between runs: `stat` of the catalog file came
 * out at 38% "self"). Counting samples charges only the time the thread was running.
 * Usage: bun bench/profile-summary.ts FILE.cpuprofile [--top=30]
 */
export {};

interface CallFrame { functionName: string; url: string; lineNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; children?: number[] }
interface Profile { nodes: ProfileNode[]; samples: number[] }

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: bun bench/profile-summary.ts FILE.cpuprofile [--top=30]\n');
  process.exit(2);
}
const top = Number(process.argv.find((a) => a.startsWith('--top='))?.split('=')[1] ?? 30);
const p = (await Bun.file(file).json()) as Profile;
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const label = (n: ProfileNode): string => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;

const self = new Map<string, number>();
const inclusive = new Map<string, number>();
for (const id of p.samples) {
  const leaf = byId.get(id);
  if (!leaf) continue;
  self.set(label(leaf), (self.get(label(leaf)) ?? 0) + 1);
  const seen = new Set<string>(); // a recursive function counts once per sample
  for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
    const l = label(byId.get(x)!);
    if (seen.has(l)) continue;
    seen.add(l);
    inclusive.set(l, (inclusive.get(l) ?? 0) + 1);
  }
}
const total = p.samples.length;
const show = (title: string, m: Map<string, number>): void => {
  console.log(`${title} (of ${total} samples)`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
};
show('self', self);
show('inclusive', inclusive);
