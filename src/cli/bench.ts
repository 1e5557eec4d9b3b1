/**
 * `edgemesh bench`: profiles this node. Scenarios live in bench/ and are registered here; the data-path
 * scenarios (proxy, tunnel, DNS) arrive with their modules.
 */
import { EdgeMeshError } from '../errors.ts';
import { SCENARIOS } from '../../bench/scenarios.ts';

export async function runBench(names: string[], o: { list?: boolean; json?: boolean }): Promise<void> {
  if (o.list) {
    for (const s of SCENARIOS) process.stdout.write(`${s.name.padEnd(12)} ${s.description}\n`);
    return;
  }
  const chosen = names.length ? names.map((n) => SCENARIOS.find((s) => s.name === n) ?? n) : SCENARIOS;
  const unknown = chosen.filter((c) => typeof c === 'string');
  if (unknown.length) throw new EdgeMeshError('USAGE', `unknown scenario ${unknown.join(', ')}; available: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  const results: unknown[] = [];
  for (const s of chosen as typeof SCENARIOS) {
    process.stderr.write(`bench: running ${s.name} — ${s.description}\n`);
    const r = await s.run((line) => process.stderr.write(`  ${line}\n`));
    results.push({ scenario: s.name, ...r });
    if (!o.json) process.stdout.write(r.table + '\n');
  }
  if (o.json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}
