/**
 * The layers of the code, checked on its import graph (static and dynamic relative imports of src/ and bench/):
 * data flows sources → catalog → consumers → dial, and the tunnel is a provider that dial/ never imports (the
 * composition root hands it in). Imports point down that chain, never back up, and no file reaches itself
 * through its imports. The checker is tested on a planted graph first, so these tests can fail.
 */
import { describe, expect, test } from 'bun:test';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const root = resolve(import.meta.dir, '..');

type Graph = Map<string, string[]>;

function tsFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) tsFiles(p, out);
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Every relative import of each file, as repository paths (type-only imports included: they are coupling too). */
function importGraph(dirs: string[]): Graph {
  const g: Graph = new Map();
  for (const f of dirs.flatMap((d) => tsFiles(join(root, d)))) {
    const text = readFileSync(f, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) deps.push(relative(root, resolve(dirname(f), m[1]!)));
    g.set(relative(root, f), deps);
  }
  return g;
}

/** Import circles: the strongly connected components of more than one file (Tarjan), or a file importing itself. */
function cycles(g: Graph): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || (g.get(v) ?? []).includes(v)) out.push(scc.sort());
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

/** `from` (a folder prefix) may not import anything under the `forbidden` prefixes: each offence as "a → b". */
interface Rule {
  from: string;
  /** Files or folders under `from` the rule does not apply to. */
  except?: string[];
  forbidden: string[];
  why: string;
}

const CONSUMERS = ['src/dns/', 'src/proxy/', 'src/gateway/', 'src/cni/'];
const ROOT = ['src/agent.ts', 'src/cli/'];

const RULES: Rule[] = [
  { from: 'src/tunnel/', forbidden: [...CONSUMERS, 'src/dial/route.ts', ...ROOT], why: 'the tunnel serves dial/; it knows no consumer' },
  { from: 'src/dial/', forbidden: [...CONSUMERS, 'src/tunnel/', ...ROOT], why: 'dial/ is handed the tunnel (RemoteDialer); it imports no provider or consumer' },
  { from: 'src/catalog/', forbidden: [...CONSUMERS, 'src/lb/', 'src/dial/', 'src/tunnel/', ...ROOT], why: 'the catalog is below everything that reads it' },
  { from: 'src/lb/', forbidden: [...CONSUMERS, 'src/dial/', 'src/tunnel/', ...ROOT], why: 'balancers know endpoints, not who dials them' },
  { from: 'src/net/', forbidden: [...CONSUMERS, 'src/catalog/', 'src/lb/', 'src/dial/', 'src/tunnel/', ...ROOT], why: 'net/ is the floor' },
  { from: 'src/obs/', forbidden: [...CONSUMERS, 'src/catalog/', 'src/lb/', 'src/dial/', 'src/tunnel/', ...ROOT], why: 'logging and metrics are the floor' },
  { from: 'src/config/', forbidden: [...CONSUMERS, 'src/dial/', 'src/tunnel/', ...ROOT], why: 'configuration is read by modules, never the reverse' },
  { from: 'src/', except: ['src/cli/bench.ts'], forbidden: ['bench/', 'test/', 'scripts/'], why: 'the binary imports no bench (but the scenarios of `edgemesh bench`), test or script' },
];

function offences(g: Graph, rules: Rule[]): string[] {
  const out: string[] = [];
  for (const [file, deps] of g) {
    for (const r of rules) {
      if (!file.startsWith(r.from) || r.except?.some((e) => file.startsWith(e))) continue;
      for (const d of deps) if (r.forbidden.some((f) => d === f || d.startsWith(f))) out.push(`${file} → ${d} (${r.why})`);
    }
  }
  return out;
}

describe('the import graph', () => {
  test('the checker finds a planted circle and a planted upward import', () => {
    const planted: Graph = new Map([
      ['src/tunnel/a.ts', ['src/proxy/tcp.ts', 'src/dial/pump.ts']],
      ['src/proxy/tcp.ts', ['src/proxy/b.ts', 'src/dial/pump.ts']],
      ['src/proxy/b.ts', ['src/proxy/tcp.ts']],
      ['src/dial/pump.ts', []],
    ]);
    expect(cycles(planted)).toEqual([['src/proxy/b.ts', 'src/proxy/tcp.ts']]);
    expect(offences(planted, RULES)).toEqual([`src/tunnel/a.ts → src/proxy/tcp.ts (${RULES[0]!.why})`]);
  });

  test('the checker reads the repository: it sees the files and the imports that are there', () => {
    const g = importGraph(['src', 'bench']);
    expect(g.get('src/proxy/tcp.ts')).toContain('src/dial/pump.ts');
    expect(g.get('src/agent.ts')).toContain('src/dial/route.ts');
    expect(g.size).toBeGreaterThan(50);
  });

  test('no import circles in src/ or bench/', () => {
    expect(cycles(importGraph(['src', 'bench']))).toEqual([]);
  });

  test('imports point down: tunnel/ and dial/ import no consumer, catalog/ none of its readers', () => {
    expect(offences(importGraph(['src']), RULES)).toEqual([]);
  });
});

/**
 * What a file loads when it is evaluated: the closure of its static value imports (`import type` and dynamic
 * `import()` excluded), as repository paths and package names.
 */
function staticClosure(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (f: string): void => {
    if (files.has(f)) return;
    files.add(f);
    const text = readFileSync(join(root, f), 'utf8');
    const specs = [
      ...[...text.matchAll(/^\s*(?:import|export)\s+(?!type\b)[^;'"]*?\bfrom\s*['"]([^'"]+)['"]/gm)].map((m) => m[1]!),
      ...[...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)].map((m) => m[1]!),
    ];
    for (const s of specs) {
      if (s.startsWith('.')) visit(relative(root, resolve(dirname(join(root, f)), s)));
      else packages.add(s.startsWith('@') ? s.split('/').slice(0, 2).join('/') : s.split('/')[0]!);
    }
  };
  visit(entry);
  return { files, packages };
}

const HEAVY_PACKAGES = (p: string) => p === 'libp2p' || p.startsWith('@libp2p/') || p.startsWith('@chainsafe/') || p === '@kubernetes/client-node';

describe('what loads when (start-up time and memory)', () => {
  test('the checker follows static imports only', () => {
    const c = staticClosure('src/agent.ts');
    expect(c.files).toContain('src/catalog/catalog.ts');
    expect(c.packages).toContain('yaml');
  });

  test('the command line loads no command until it runs: version, status, config check stay light', () => {
    const c = staticClosure('src/cli/main.ts');
    expect([...c.files].filter((f) => f === 'src/agent.ts' || /^src\/(tunnel|proxy|dns|gateway|catalog\/sources)\//.test(f))).toEqual([]);
    expect([...c.packages].filter(HEAVY_PACKAGES)).toEqual([]);
  });

  test('the agent loads the Kubernetes client, libp2p and each module only when its config turns it on', () => {
    const c = staticClosure('src/agent.ts');
    expect([...c.files].filter((f) => f === 'src/catalog/sources/kube.ts' || /^src\/(tunnel|proxy|dns|gateway)\//.test(f))).toEqual([]);
    expect([...c.packages].filter(HEAVY_PACKAGES)).toEqual([]);
  });

  test('the tunnel loads its TLS certificate helpers and Noise at the first handshake that needs them', () => {
    const c = staticClosure('src/tunnel/index.ts');
    expect([...c.packages].filter((p) => p === '@chainsafe/libp2p-noise' || p === '@peculiar/x509')).toEqual([]);
    const text = readFileSync(join(root, 'src/tunnel/security/tls.ts'), 'utf8');
    expect(text).not.toMatch(/^import\s+(?!type\b)[^;]*from\s*'@libp2p\/tls/m);
  });
});
