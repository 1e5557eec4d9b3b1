/**
 * Catalog scenario: apply latency (one object change → subscribers notified) with 1, 1,000 and 10,000 services
 * in the catalog, the initial load of N services, and snapshot write/load with 10,000 services.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Catalog } from '../src/catalog/catalog.ts';
import { type CatalogObjects, type Service, emptyObjects } from '../src/catalog/model.ts';
import { SNAPSHOT_FORMAT, loadSnapshot, writeSnapshot } from '../src/catalog/snapshot.ts';
import { createLogger } from '../src/obs/logger.ts';
import type { Scenario } from './scenario.ts';

function service(i: number): Service {
  return {
    namespace: `ns${i % 50}`, name: `svc-${i}`, type: 'ClusterIP', clusterIPs: [`10.${96 + ((i >> 16) & 7)}.${(i >> 8) & 255}.${i & 255}`],
    headless: false, externalIPs: [], loadBalancerIPs: [], sessionAffinity: 'None', sessionAffinityTimeout: 10800, labels: { app: `svc-${i}` }, proxied: true,
    ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 0 }],
  };
}

export function syntheticObjects(n: number): CatalogObjects {
  const o = emptyObjects();
  for (let i = 0; i < n; i++) {
    const s = service(i);
    o.services.push(s);
    o.endpointSlices.push({
      namespace: s.namespace, name: `${s.name}-abc`, service: s.name,
      endpoints: [0, 1, 2].map((k) => ({ ip: `10.244.${(i >> 8) & 255}.${(i + k) & 255}`, nodeName: `node-${(i + k) % 20}`, podName: `${s.name}-${k}`, hostname: '', ready: true, ports: [{ name: 'http', port: 8080, protocol: 'TCP' as const }] })),
    });
  }
  return o;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const fmt = (ms: number) => (ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(2)} ms`);

export const catalogScenario: Scenario = {
  name: 'catalog',
  description: 'catalog apply latency (1 / 1,000 / 10,000 services) and snapshot write/load (10,000 services)',
  async run(progress) {
    const rows: Record<string, unknown>[] = [];
    const logger = createLogger('bench', { level: 'error' });
    for (const n of [1, 1000, 10000]) {
      const catalog = new Catalog({ logger });
      const objects = syntheticObjects(n);
      let t0 = performance.now();
      catalog.replace(objects, 'kubernetes');
      catalog.flush();
      const initialMs = performance.now() - t0;
      const lat: number[] = [];
      const rounds = 300;
      for (let r = 0; r < rounds; r++) {
        const s = { ...objects.services[r % n]!, labels: { app: 'x', round: String(r) } };
        const done = new Promise<void>((resolve) => {
          const off = catalog.subscribe(() => {
            lat.push(performance.now() - t0);
            off();
            resolve();
          });
        });
        t0 = performance.now();
        catalog.upsert({ kind: 'services', value: s });
        await done;
      }
      rows.push({ services: n, initialLoadMs: +initialMs.toFixed(4), applyP50Ms: +pct(lat, 50).toFixed(4), applyP99Ms: +pct(lat, 99).toFixed(4) });
      progress(`${n} services: initial load ${fmt(initialMs)}, one change → notified p50 ${fmt(pct(lat, 50))} p99 ${fmt(pct(lat, 99))}`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'edgemesh-bench-'));
    try {
      const path = join(dir, 'catalog.json');
      const objects = syntheticObjects(10000);
      let t0 = performance.now();
      await writeSnapshot(path, { format: SNAPSHOT_FORMAT, savedAt: new Date().toISOString(), origin: 'kubernetes', nodeName: 'bench', objects });
      const writeMs = performance.now() - t0;
      const size = Bun.file(path).size;
      t0 = performance.now();
      const snap = await loadSnapshot(path);
      const catalog = new Catalog({ logger });
      catalog.replace(snap!.objects, 'snapshot');
      catalog.flush();
      const loadMs = performance.now() - t0;
      rows.push({ snapshotServices: 10000, snapshotBytes: size, writeMs: +writeMs.toFixed(1), loadAndApplyMs: +loadMs.toFixed(1) });
      progress(`snapshot of 10,000 services (${(size / 1e6).toFixed(1)} MB): write ${fmt(writeMs)}, load+apply ${fmt(loadMs)}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const table = [
      '| services | initial load | apply p50 | apply p99 |',
      '|---:|---:|---:|---:|',
      ...rows.filter((r) => 'services' in r).map((r) => `| ${r.services} | ${fmt(r.initialLoadMs as number)} | ${fmt(r.applyP50Ms as number)} | ${fmt(r.applyP99Ms as number)} |`),
      '',
      ...rows.filter((r) => 'snapshotServices' in r).map((r) => `snapshot, 10,000 services (${((r.snapshotBytes as number) / 1e6).toFixed(1)} MB): write ${fmt(r.writeMs as number)}, load + apply ${fmt(r.loadAndApplyMs as number)}`),
    ].join('\n');
    return { table, rows };
  },
};
