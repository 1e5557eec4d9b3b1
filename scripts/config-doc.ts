#!/usr/bin/env bun
/**
 * Render the configuration reference tables of docs/config.md from the schema, so the docs cannot drift from
 * the code. `bun scripts/config-doc.ts` prints them; `--write` replaces the generated block in docs/config.md.
 * A test fails when docs/config.md is stale.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { defaultConfig } from '../src/config/load.ts';
import type { Field, ObjectField } from '../src/config/schema.ts';
import { agentSchema, gatewaySchema } from '../src/config/schema-edgemesh.ts';

const BEGIN = '<!-- BEGIN GENERATED: bun scripts/config-doc.ts --write -->';
const END = '<!-- END GENERATED -->';

function rows(field: ObjectField<Record<string, Field<unknown>>>, def: Record<string, unknown>, prefix: string, out: string[]): void {
  for (const [k, f] of Object.entries(field.shape)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (f.kind === 'object') {
      rows(f as ObjectField<Record<string, Field<unknown>>>, def[k] as Record<string, unknown>, path, out);
      continue;
    }
    const v = def[k];
    const shown = Array.isArray(v) ? (v.length ? JSON.stringify(v) : '`[]`') : typeof v === 'string' ? (v === '' ? '`""`' : `\`${v}\``) : `\`${String(v)}\``;
    out.push(`| \`${path}\` | ${shown} | ${f.allowed} |`);
  }
}

export function renderConfigDoc(): string {
  const out: string[] = [BEGIN, '', '### Agent (`edgemesh agent`, edge-mode defaults)', '', '| key | default | allowed |', '|---|---|---|'];
  rows(agentSchema as unknown as ObjectField<Record<string, Field<unknown>>>, defaultConfig('agent', 'edge') as unknown as Record<string, unknown>, '', out);
  out.push('', '### Gateway (`edgemesh gateway`)', '', '| key | default | allowed |', '|---|---|---|');
  rows(gatewaySchema as unknown as ObjectField<Record<string, Field<unknown>>>, defaultConfig('gateway', 'edge') as unknown as Record<string, unknown>, '', out);
  out.push('', END);
  return out.join('\n');
}

export function docPath(): string {
  return join(resolve(import.meta.dir, '..'), 'docs/config.md');
}

export function withGenerated(doc: string): string {
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  if (a < 0 || b < 0) throw new Error('docs/config.md has no generated block markers');
  return doc.slice(0, a) + renderConfigDoc() + doc.slice(b + END.length);
}

if (import.meta.main) {
  if (process.argv.includes('--write')) {
    writeFileSync(docPath(), withGenerated(readFileSync(docPath(), 'utf8')));
    process.stderr.write(`updated ${docPath()}\n`);
  } else {
    process.stdout.write(renderConfigDoc() + '\n');
  }
}
