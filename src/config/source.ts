/**
 * config/ — a config file's text as users have it: the config itself, or the original's ConfigMap that carries it
 * under `data` (one object, or among other documents of a multi-document file), with every issue placed at its
 * line and column in the file.
 *
 *   const src = readConfigText(text)
 *   src.data         // the config object (from the ConfigMap's data entry when there is one)
 *   src.note         // "read from ConfigMap kubeedge/edgemesh-agent-cfg, data key edgemesh-agent.yaml"
 *   src.locate('modules.edgeTunnel.listenPort')   // { line: 14, col: 7 } in the file
 */
import { type Document, LineCounter, isMap, isPair, isScalar, isSeq, parseAllDocuments, parseDocument } from 'yaml';
import type { ConfigIssue } from './schema.ts';

export interface ConfigSource {
  data: unknown;
  /** Syntax problems and problems of the file's shape (several configs, an empty ConfigMap), placed. */
  issues: ConfigIssue[];
  /** Where the config came from when it was not the whole file. */
  note: string | null;
  /** The line and column (1-based) of a key path's value in the file (of its key with `key`), or null. */
  locate(path: string, key?: boolean): { line: number; col: number } | null;
}

type Node = unknown;

/** A dotted path with [i] indexes, e.g. `a.b[0].c`. */
function splitPath(path: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const part of path.split('.')) {
    const m = /^([^[]*)((?:\[\d+\])*)$/.exec(part);
    if (!m) return [];
    if (m[1]) out.push(m[1]);
    for (const i of m[2]!.matchAll(/\[(\d+)\]/g)) out.push(Number(i[1]));
  }
  return out;
}

/** The node for `path` in a parsed document (map keys matched case-insensitively, as the config merge does). */
function find(doc: Document, path: string, wantKey = false): { node: Node; key: boolean } | null {
  let cur: Node = doc.contents;
  let lastKey: Node = null;
  for (const seg of splitPath(path)) {
    if (typeof seg === 'number') {
      if (!isSeq(cur) || !cur.items[seg]) return lastKey ? { node: lastKey, key: true } : null;
      cur = cur.items[seg];
      continue;
    }
    if (!isMap(cur)) return lastKey ? { node: lastKey, key: true } : null;
    const pair = cur.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value).toLowerCase() === seg.toLowerCase());
    if (!pair) return lastKey ? { node: lastKey, key: true } : null;
    lastKey = pair.key;
    cur = pair.value ?? pair.key;
  }
  return wantKey && lastKey ? { node: lastKey, key: true } : { node: cur, key: false };
}

function rangeStart(n: Node): number | null {
  const r = (n as { range?: [number, number, number] } | null)?.range;
  return r ? r[0] : null;
}

export function readConfigText(text: string): ConfigSource {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const list = (Array.isArray(docs) ? docs : [docs]) as Document[];
  const at = (pos: number) => lc.linePos(pos);
  const syntax: ConfigIssue[] = [];
  for (const d of list) {
    for (const e of d.errors) {
      const p = at(e.pos[0]);
      syntax.push({ path: 'YAML', message: e.message.split('\n')[0]!, line: p.line, col: p.col });
    }
  }
  const plain = (doc: Document | undefined, note: string | null = null): ConfigSource => ({
    data: doc ? doc.toJS({ maxAliasCount: 100 }) : undefined,
    issues: syntax,
    note,
    locate: (path, key) => {
      if (!doc) return null;
      const f = find(doc, path, key);
      const s = f ? rangeStart(f.node) : null;
      return s === null ? null : at(s);
    },
  });
  if (syntax.length) return { ...plain(undefined), issues: syntax };
  const nonEmpty = list.filter((d) => d.contents !== null);
  if (nonEmpty.length === 0) return plain(undefined);

  // The original's manifests carry the config in a ConfigMap: take its data entry (the first YAML one).
  const kind = (d: Document) => String((d.toJS() as { kind?: unknown } | null)?.kind ?? '').toLowerCase();
  const cm = nonEmpty.find((d) => kind(d) === 'configmap');
  if (cm) {
    const obj = cm.toJS() as { metadata?: { name?: string; namespace?: string }; data?: Record<string, unknown> };
    const entries = Object.entries(obj.data ?? {}).filter(([, v]) => typeof v === 'string');
    const entry = entries.find(([k]) => /\.ya?ml$/i.test(k)) ?? entries[0];
    const name = `${obj.metadata?.namespace ? `${obj.metadata.namespace}/` : ''}${obj.metadata?.name ?? '(unnamed)'}`;
    if (!entry) {
      const p = at(rangeStart(cm.contents) ?? 0);
      return { ...plain(undefined), issues: [{ path: 'data', message: `ConfigMap ${name} has no data entry holding a config`, line: p.line, col: p.col }] };
    }
    const [key, inner] = entry as [string, string];
    // Where the entry's text starts in the file: a block scalar's content begins on the line after its indicator.
    // (The key may hold dots: looked up directly, not through a dotted path.)
    const dataNode = find(cm, 'data')?.node;
    const valueNode = isMap(dataNode) ? dataNode.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === key)?.value : undefined;
    const start = rangeStart(valueNode);
    const scalarType = isScalar(valueNode) ? valueNode.type : undefined;
    const block = scalarType === 'BLOCK_LITERAL' || scalarType === 'BLOCK_FOLDED';
    const base = start === null ? { line: 1, col: 1 } : at(start);
    const firstLine = block ? base.line + 1 : base.line;
    const indent = block ? (/^( *)/.exec(text.split('\n')[firstLine - 1] ?? '')?.[1]!.length ?? 0) : base.col - 1;
    const ilc = new LineCounter();
    const idoc = parseDocument(inner, { lineCounter: ilc, prettyErrors: false, uniqueKeys: true });
    const shift = (pos: number) => {
      const p = ilc.linePos(pos);
      return block ? { line: firstLine + p.line - 1, col: p.col + indent } : base;
    };
    const note = `read from ConfigMap ${name}, data key ${key}`;
    if (idoc.errors.length) {
      return { ...plain(undefined, note), issues: idoc.errors.map((e) => ({ path: `YAML in data.${key}`, message: e.message.split('\n')[0]!, ...shift(e.pos[0]) })) };
    }
    return {
      data: idoc.toJS({ maxAliasCount: 100 }),
      issues: [],
      note,
      locate: (path, key) => {
        const f = find(idoc, path, key);
        const s = f ? rangeStart(f.node) : null;
        return s === null ? null : shift(s);
      },
    };
  }
  if (nonEmpty.length > 1) {
    const configs = nonEmpty.filter((d) => /^edgemesh(agent|gateway)$/.test(kind(d)));
    if (configs.length === 1) return plain(configs[0], `read the ${kind(configs[0]!) === 'edgemeshgateway' ? 'EdgeMeshGateway' : 'EdgeMeshAgent'} document of ${nonEmpty.length}`);
    const p = at(rangeStart(nonEmpty[1]!.contents) ?? 0);
    return { ...plain(undefined), issues: [{ path: '(file)', message: `${nonEmpty.length} YAML documents, and not one config among them: keep one config (kind EdgeMeshAgent or EdgeMeshGateway), or the original's ConfigMap`, line: p.line, col: p.col }] };
  }
  return plain(nonEmpty[0]);
}
