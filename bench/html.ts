/**
 * `edgemesh bench --report FILE.html`: the report as one self-contained page (no scripts, fonts or fetches),
 * readable on a phone: the node's facts, every figure beside its baseline and ratio, bars for figure vs baseline,
 * latency histograms and throughput over time, all drawn here as inline SVG.
 *
 * Every figure is also in the markup as data (`data-metric`, `data-value`, `data-baseline`), so a program can
 * read the page back.
 */
import type { BenchReport, Change, Histogram, Metric, Series } from './report.ts';

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const num = (x: number): string => (Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en-US') : String(Number(x.toPrecision(4))));

/** Figure against baseline as two horizontal bars on one scale. */
function bars(m: Metric): string {
  if (!m.baseline) return '';
  const max = Math.max(m.value, m.baseline.value) || 1;
  const w = 300;
  const row = (y: number, label: string, v: number, cls: string, attr: string) =>
    `<text x="0" y="${y + 13}" class="l">${esc(label)}</text><rect x="110" y="${y}" width="${((v / max) * (w - 180)).toFixed(1)}" height="18" class="${cls}" ${attr}/><text x="${(110 + (v / max) * (w - 180) + 4).toFixed(1)}" y="${y + 13}" class="v">${esc(num(v))}</text>`;
  return `<svg class="bars" viewBox="0 0 ${w} 48" role="img" aria-label="${esc(m.label)}: ${esc(num(m.value))} ${esc(m.unit)} against ${esc(num(m.baseline.value))}" data-metric="${esc(m.id)}">` +
    row(2, 'edgemesh', m.value, 'ours', `data-value="${m.value}"`) + row(26, m.baseline.label, m.baseline.value, 'base', `data-baseline="${m.baseline.value}"`) + '</svg>';
}

function histogramSvg(m: Metric, h: Histogram): string {
  if (!h.buckets.length) return '';
  const w = 300, hgt = 90, pad = 16;
  const max = Math.max(...h.buckets.map((b) => b.count));
  const bw = (w - 2) / h.buckets.length;
  const rects = h.buckets.map((b, i) => {
    const bh = (b.count / max) * (hgt - pad - 4);
    return `<rect x="${(1 + i * bw).toFixed(1)}" y="${(hgt - pad - bh).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${bh.toFixed(1)}" class="ours" data-le="${b.le}" data-count="${b.count}"><title>≤ ${esc(num(b.le))} ${esc(m.unit)}: ${b.count}</title></rect>`;
  }).join('');
  const first = h.buckets[0]!, last = h.buckets[h.buckets.length - 1]!;
  return `<figure><svg class="hist" viewBox="0 0 ${w} ${hgt}" role="img" aria-label="histogram of ${esc(m.label)}" data-histogram="${esc(m.id)}">${rects}` +
    `<text x="1" y="${hgt - 3}" class="l">${esc(num(first.le))} ${esc(m.unit)}</text><text x="${w - 1}" y="${hgt - 3}" class="l" text-anchor="end">${esc(num(last.le))} ${esc(m.unit)}</text></svg>` +
    `<figcaption>${esc(m.label)}: distribution of every sample (log scale, the median repeat)</figcaption></figure>`;
}

function seriesSvg(m: Metric, s: Series): string {
  if (!s.points.length) return '';
  const w = 300, h = 90, pad = 14;
  const tMax = s.points[s.points.length - 1]!.t || 1;
  const vMax = Math.max(...s.points.map((p) => p.value)) || 1;
  const points = s.points.length === 1 ? [{ t: 0, value: s.points[0]!.value }, s.points[0]!] : s.points;
  const pts = points.map((p) => `${((p.t / tMax) * (w - 2) + 1).toFixed(1)},${(h - pad - (p.value / vMax) * (h - pad - 4)).toFixed(1)}`).join(' ');
  return `<figure><svg class="series" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(m.label)} over time" data-series="${esc(m.id)}"><polyline points="${pts}" class="line"/>` +
    `<text x="1" y="${h - 2}" class="l">0 s</text><text x="${w - 1}" y="${h - 2}" class="l" text-anchor="end">${esc(num(tMax))} s</text><text x="2" y="10" class="l">${esc(num(vMax))} ${esc(s.unit)}</text></svg>` +
    `<figcaption>${esc(m.label)} over time (per 100 ms, the median repeat)</figcaption></figure>`;
}

export function renderHtml(r: BenchReport, changes?: { against: string; list: Change[] }): string {
  const n = r.node;
  const facts: [string, string][] = [
    ['edgemesh', `${r.edgemesh.version} (${r.edgemesh.commit})`], ['host', n.hostname], ['CPU', `${n.cpuModel}, ${n.cores} cores`],
    ['memory', `${n.memoryMiB} MiB`], ['system', `${n.platform}/${n.arch}, kernel ${n.kernel}, bun ${n.bun}`],
    ...Object.entries(n.engines).map(([k, v]) => [k, v] as [string, string]),
    ['run', `${r.startedAt} → ${r.finishedAt}, ${r.options.repeat} repeats of ${r.options.duration} s`],
    ['machine', `load ${r.busy.loadBefore} before, up to ${r.busy.loadDuringMax} during; other processes ${r.busy.othersCpuPct}% of the CPU; steal ${r.busy.stealPct}%`],
  ];
  const sections = r.scenarios.map((s) => {
    const head = `<h2 id="${esc(s.id)}">${esc(s.id)}</h2><p>${esc(s.description)}</p>`;
    if (s.status !== 'ok') return `${head}<p class="warn" data-status="${s.status}">${esc(s.status)}: ${esc(s.reason ?? '')}</p>`;
    const f = Object.entries(s.facts).map(([k, v]) => `<li>${esc(k)}: ${esc(v)}</li>`).join('');
    const rows = s.metrics.map((m) => `<tr data-metric="${esc(m.id)}" data-value="${m.value}"${m.baseline ? ` data-baseline="${m.baseline.value}"` : ''}${m.ratio !== null ? ` data-ratio="${m.ratio}"` : ''}>` +
      `<td>${esc(m.label)}</td><td class="n">${esc(num(m.value))} ${esc(m.unit)}</td><td class="n">±${(m.spread * 50).toFixed(0)}%</td>` +
      `<td class="n">${m.baseline ? `${esc(num(m.baseline.value))} <small>${esc(m.baseline.label)}</small>` : '—'}</td><td class="n">${m.ratio === null ? '—' : m.ratio.toFixed(2)}</td></tr>`).join('');
    const charts = s.metrics.map((m) => [bars(m), m.histogram ? histogramSvg(m, m.histogram) : '', m.series ? seriesSvg(m, m.series) : ''].join('')).join('');
    return `${head}${f ? `<ul>${f}</ul>` : ''}<div class="scroll"><table><thead><tr><th>figure</th><th>value</th><th>spread</th><th>baseline, same run</th><th>ratio</th></tr></thead><tbody>${rows}</tbody></table></div><div class="charts">${charts}</div>`;
  }).join('\n');
  const cmp = changes ? `<h2 id="compare">against ${esc(changes.against)}</h2><div class="scroll"><table><thead><tr><th>figure</th><th>compared</th><th>before</th><th>now</th><th>change</th><th></th></tr></thead><tbody>${
    changes.list.map((c) => `<tr data-change="${esc(c.id)}" data-verdict="${c.verdict}"><td>${esc(c.scenario)} · ${esc(c.label)}</td><td>${c.basis === 'ratio' ? 'ratio' : esc(c.unit)}</td><td class="n">${esc(num(c.old))}</td><td class="n">${esc(num(c.new))}</td><td class="n">${c.change >= 0 ? '+' : ''}${(c.change * 100).toFixed(1)}%</td><td class="${c.verdict === 'REGRESSED' ? 'bad' : ''}">${c.verdict === 'same' ? '' : esc(c.verdict)}</td></tr>`).join('')
  }</tbody></table></div>` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgemesh bench — ${esc(n.hostname)}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:52rem;padding:0 .8rem 2rem;color:#1b1f24;background:#fff}
h1{font-size:1.35rem}h2{font-size:1.1rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{padding:.25rem .4rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.n{text-align:right;white-space:nowrap}.scroll{overflow-x:auto}.warn{background:#fff4d6;padding:.5rem;border-left:4px solid #e0a800}
.bad{color:#b00020;font-weight:bold}.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.6rem;margin-top:.6rem}
svg{width:100%;height:auto;display:block}.ours{fill:#2f6fdb}.base{fill:#9aa4b2}.line{fill:none;stroke:#2f6fdb;stroke-width:1.5}
.l,.v{font-size:10px;fill:#444}figure{margin:0}figcaption{font-size:.75rem;color:#555}
</style></head><body>
<h1>edgemesh bench on ${esc(n.hostname)}</h1>
${r.busy.warning ? `<p class="warn" id="busy">${esc(r.busy.warning)}</p>` : ''}
<div class="scroll"><table id="node"><tbody>${facts.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</tbody></table></div>
${cmp}
${sections}
<p><small>Ratios are against a baseline measured in the same run on this node; the spread is half the range of the repeats around their median.</small></p>
</body></html>
`;
}
