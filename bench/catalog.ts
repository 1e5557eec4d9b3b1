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
import { percentile } from './report.ts';
import type { RawFigure, Scenario } from './scenario.ts';

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


export const catalogScenario: Scenario = {
  id: 'catalog',
  description: 'catalog apply latency (1 / 1,000 / 10,000 services) and snapshot write/load (10,000 services)',
  async run(ctx) {
    const out: RawFigure[] = [];
    const logger = createLogger('bench', { level: 'error' });
    for (const n of [1, 1000, 10000]) {
      ctx.progress(`${n.toLocaleString('en-US')} services: initial load and one change at a time`);
      const catalog = new Catalog({ logger });
      const objects = syntheticObjects(n);
      let t0 = performance.now();
      catalog.replace(objects, 'kubernetes');
      catalog.flush();
      const initialMs = performance.now() - t0;
      const lat: number[] = [];
      const end = performance.now() + Math.max(0.1, ctx.duration / 3) * 1000;
      for (let r = 0; r < 10 || (r < 300 && performance.now() < end); r++) {
        const s = { ...objects.services[r % n]!, labels: { app: 'x', round: String(r) } };
        const done = new Promise<void>((resolve) => {
          const off = catalog.subscribe(() => {
            lat.push((performance.now() - t0) * 1000);
            off();
            resolve();
          });
        });
        t0 = performance.now();
        catalog.upsert({ kind: 'services', value: s });
        await done;
      }
      const tag = n.toLocaleString('en-US');
      out.push(
        { id: `catalog.load.${n}`, label: `initial load of ${tag} service${n === 1 ? '' : 's'}`, unit: 'ms', better: 'lower', value: initialMs },
        { id: `catalog.apply.${n}.p50`, label: `one change notified, ${tag} service${n === 1 ? '' : 's'}, p50`, unit: 'µs', better: 'lower', value: percentile(lat, 50), latencies: lat },
        { id: `catalog.apply.${n}.p99`, label: `one change notified, ${tag} service${n === 1 ? '' : 's'}, p99`, unit: 'µs', better: 'lower', value: percentile(lat, 99) },
      );
    }
    ctx.progress('snapshot of 10,000 services: write and load');
    const dir = mkdtempSync(join(tmpdir(), 'edgemesh-bench-'));
    try {
      const path = join(dir, 'catalog.json');
      const objects = syntheticObjects(10000);
      let t0 = performance.now();
      await writeSnapshot(path, { format: SNAPSHOT_FORMAT, savedAt: new Date().toISOString(), origin: 'kubernetes', nodeName: 'bench', objects });
      const writeMs = performance.now() - t0;
      ctx.fact('snapshot of 10,000 services', `${(Bun.file(path).size / 1e6).toFixed(1)} MB`);
      t0 = performance.now();
      const snap = await loadSnapshot(path);
      const catalog = new Catalog({ logger });
      catalog.replace(snap!.objects, 'snapshot');
      catalog.flush();
      const loadMs = performance.now() - t0;
      out.push(
        { id: 'catalog.snapshot.write', label: 'snapshot write, 10,000 services', unit: 'ms', better: 'lower', value: writeMs },
        { id: 'catalog.snapshot.load', label: 'snapshot load and apply, 10,000 services', unit: 'ms', better: 'lower', value: loadMs },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return out;
  },
};
