/**
 * The docs keep their promises about names: every command and flag the README's command table shows exists in
 * the CLI, every config key the docs name exists in the schema, and every repository path they name exists.
 * (The admin endpoints docs/config.md lists are checked against a running agent in agent-file.test.ts.)
 */
import { describe, expect, test } from 'bun:test';
import type { Command } from 'commander';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildProgram } from '../src/cli/main.ts';
import { defaultConfig } from '../src/config/load.ts';

const root = resolve(import.meta.dir, '..');
const read = (p: string) => readFileSync(join(root, p), 'utf8');
const docFiles = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** Every `edgemesh …` invocation in the README's command table, as [command path, flags]. */
function commandTable(readme: string): { words: string[]; flags: string[] }[] {
  const start = readme.indexOf('## Commands');
  const table = readme.slice(start, readme.indexOf('\n## ', start + 5));
  const out: { words: string[]; flags: string[] }[] = [];
  for (const m of table.matchAll(/^\| `edgemesh ([^`]+)` \|/gm)) {
    const parts = m[1]!.replace(/\[|\]|…/g, ' ').split(/\s+/).filter(Boolean);
    const words: string[] = [];
    for (const p of parts) {
      if (p.startsWith('-') || p === p.toUpperCase()) break;
      words.push(p);
    }
    out.push({ words, flags: parts.filter((p) => p.startsWith('--')) });
  }
  return out;
}

function find(program: Command, words: string[]): Command | null {
  let c: Command | undefined = program;
  for (const w of words) {
    c = c?.commands.find((x) => x.name() === w);
    if (!c) return null;
  }
  return c ?? null;
}

/** Dotted config keys the docs name in backticks (`modules.edgeTunnel.psk.path`, `commonConfig.stateDir`, …). */
function configKeys(text: string): string[] {
  const keys = new Set<string>();
  for (const m of text.matchAll(/`((?:modules|commonConfig|kubeAPIConfig|catalog)\.[A-Za-z0-9.]+)`/g)) keys.add(m[1]!.replace(/\.$/, ''));
  return [...keys];
}

/** Whether a dotted path names a key of the config (keys are case-insensitive, as the original's). */
function hasKey(config: unknown, path: string): boolean {
  let cur: unknown = config;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return false;
    const k = Object.keys(cur).find((x) => x.toLowerCase() === part.toLowerCase());
    if (k === undefined) return false;
    cur = (cur as Record<string, unknown>)[k];
  }
  return true;
}

/** Repository paths the docs name in backticks or links: src/…, bench/…, scripts/…, test/…, docs/…. */
function repoPaths(text: string): string[] {
  const out = new Set<string>();
  for (const m of text.matchAll(/[`(]((?:src|bench|scripts|test|docs)\/[A-Za-z0-9_./-]+?)[`)#:,\s]/g)) out.add(m[1]!.replace(/[.,]$/, ''));
  return [...out];
}

/** GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}_\- ]/gu, '').replace(/ /g, '-');
}

/** Relative Markdown links to .md files (with an optional #anchor) that do not resolve. */
function brokenLinks(file: string): string[] {
  const text = read(file);
  const out: string[] = [];
  for (const m of text.matchAll(/\]\(([A-Za-z0-9_./-]*\.md)?(#[^)\s]+)?\)/g)) {
    const target = m[1] ? join(file, '..', m[1]) : file;
    if (!m[1] && !m[2]) continue;
    if (!existsSync(join(root, target))) {
      out.push(`${file}: ${m[0]}`);
      continue;
    }
    if (!m[2]) continue;
    const anchors = read(target).split('\n').filter((l) => l.startsWith('#')).map((l) => slug(l.replace(/^#+/, '')));
    if (!anchors.includes(m[2].slice(1))) out.push(`${file}: ${m[0]}`);
  }
  return out;
}

describe('the docs name what exists', () => {
  test('the extractors see what is there and refuse what is not', () => {
    const program = buildProgram();
    expect(find(program, ['psk', 'generate'])).not.toBeNull();
    expect(find(program, ['psk', 'rotate'])).toBeNull();
    const cfg = defaultConfig('agent', 'edge');
    expect(hasKey(cfg, 'modules.edgeTunnel.psk.path')).toBe(true);
    expect(hasKey(cfg, 'modules.edgetunnel.PSK.Path')).toBe(true);
    expect(hasKey(cfg, 'modules.edgeTunnel.psk.colour')).toBe(false);
    expect(configKeys('set `modules.edgeDNS.listenPort` or `commonConfig.stateDir`.')).toEqual(['modules.edgeDNS.listenPort', 'commonConfig.stateDir']);
    expect(repoPaths('see `src/dial/pump.ts` and [x](docs/tunnel.md#a)')).toEqual(['src/dial/pump.ts', 'docs/tunnel.md']);
    expect(slug('The listener — what is left (2026-12-03, 01:45 UTC)')).toBe('the-listener--what-is-left-2026-12-03-0145-utc');
  });

  test('every command and flag of the README\'s command table exists in the CLI', () => {
    const program = buildProgram();
    const rows = commandTable(read('README.md'));
    expect(rows.length).toBeGreaterThan(8);
    const missing: string[] = [];
    for (const r of rows) {
      const c = find(program, r.words);
      if (!c) {
        missing.push(`edgemesh ${r.words.join(' ')}`);
        continue;
      }
      for (const f of r.flags) if (!c.options.some((o) => o.long === f)) missing.push(`edgemesh ${r.words.join(' ')} ${f}`);
    }
    expect(missing).toEqual([]);
  });

  test('every config key the docs name exists (agent or gateway)', () => {
    const agent = defaultConfig('agent', 'edge');
    const gateway = defaultConfig('gateway', 'edge');
    const missing: string[] = [];
    for (const f of docFiles) for (const k of configKeys(read(f))) if (!hasKey(agent, k) && !hasKey(gateway, k)) missing.push(`${f}: ${k}`);
    expect(missing).toEqual([]);
  });

  test('every link between the docs reaches a file and a heading that exist', () => {
    const files = [...docFiles, ...readdirSync(join(root, 'docs/journal')).map((f) => `docs/journal/${f}`)];
    expect(files.flatMap(brokenLinks)).toEqual([]);
  });

  test('every repository path the docs name exists', () => {
    const missing: string[] = [];
    for (const f of docFiles) for (const p of repoPaths(read(f))) if (!existsSync(join(root, p))) missing.push(`${f}: ${p}`);
    expect(missing).toEqual([]);
  });
});
