/**
 * The file source: a YAML or JSON file of Kubernetes objects as `kubectl get -o yaml` prints them (single
 * objects, `kind: List`, `---`-separated documents). The file is watched; an edit applies within a second.
 * A broken edit is reported as `file:line: reason` and the last good catalog stays in force.
 */
import { type FSWatcher, watch } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { type Document, LineCounter, isMap, isSeq, parseAllDocuments } from 'yaml';
import { describeError } from '../../errors.ts';
import type { Logger } from '../../obs/logger.ts';
import type { Catalog } from '../catalog.ts';
import { type ConvertOptions, ConvertError, convertObject } from '../convert.ts';
import { type CatalogObjects, emptyObjects } from '../model.ts';

export interface CatalogFileProblem {
  line: number;
  message: string;
}

export interface ParsedCatalog {
  objects: CatalogObjects;
  errors: CatalogFileProblem[];
  /** Objects of kinds the catalog does not use, with their line. */
  ignored: CatalogFileProblem[];
}

/** Parse catalog text. Never throws: every problem comes back with its line. */
export function parseCatalogText(text: string, opts: ConvertOptions): ParsedCatalog {
  const lc = new LineCounter();
  const out: ParsedCatalog = { objects: emptyObjects(), errors: [], ignored: [] };
  let docs: Document.Parsed[];
  try {
    docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false }) as Document.Parsed[];
  } catch (err) {
    out.errors.push({ line: 1, message: describeError(err) });
    return out;
  }
  if (!Array.isArray(docs)) docs = [docs as Document.Parsed];
  const lineAt = (offset: number | undefined) => (offset === undefined ? 1 : lc.linePos(offset).line);
  const seen = new Map<string, number>();

  const take = (value: unknown, line: number) => {
    try {
      const r = convertObject(value, opts);
      if ('ignored' in r) {
        out.ignored.push({ line, message: r.ignored });
        return;
      }
      const v = r.value as { namespace?: string; name: string };
      const id = `${r.kind}:${v.namespace ?? ''}/${v.name}`;
      const first = seen.get(id);
      if (first !== undefined) {
        out.errors.push({ line, message: `${id.split(':')[1]} (${r.kind}) is defined twice (first at line ${first})` });
        return;
      }
      seen.set(id, line);
      (out.objects[r.kind] as unknown[]).push(r.value);
    } catch (err) {
      out.errors.push({ line, message: err instanceof ConvertError ? err.message : describeError(err) });
    }
  };

  for (const doc of docs) {
    for (const e of doc.errors) out.errors.push({ line: lineAt(e.pos[0]), message: e.message.split('\n')[0]! });
    if (doc.errors.length) continue;
    const contents = doc.contents;
    if (contents === null) continue; // an empty document (e.g. a trailing ---)
    const docLine = lineAt(contents.range?.[0]);
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      out.errors.push({ line: docLine, message: describeError(err) });
      continue;
    }
    if (value === null || value === undefined) continue;
    const rec = value as Record<string, unknown>;
    if (typeof value === 'object' && !Array.isArray(value) && typeof rec.kind === 'string' && rec.kind.endsWith('List') && Array.isArray(rec.items)) {
      // kind: List (or ServiceList etc.): each item reports its own line.
      const itemsNode = isMap(contents) ? contents.get('items', true) : undefined;
      rec.items.forEach((item, i) => {
        const node = isSeq(itemsNode) ? itemsNode.items[i] : undefined;
        const line = lineAt((node as { range?: [number, number, number] } | undefined)?.range?.[0] ?? contents.range?.[0]);
        // Typed lists (ServiceList) omit apiVersion/kind on items; fill them in from the list's kind.
        const it = item as Record<string, unknown>;
        if (it && typeof it === 'object' && !it.kind && rec.kind !== 'List') take({ apiVersion: rec.apiVersion, kind: (rec.kind as string).slice(0, -4), ...it }, line);
        else take(item, line);
      });
    } else {
      take(value, docLine);
    }
  }
  return out;
}

export interface FileSourceDeps {
  path: string;
  catalog: Catalog;
  logger: Logger;
  convert: ConvertOptions;
  /** Stat poll interval, the safety net under inotify (ConfigMap symlink swaps, network filesystems). */
  pollMs?: number;
  /** Quiet time after a change notification before reading (editors write in several steps). */
  settleMs?: number;
}

export interface FileSourceStatus {
  path: string;
  lastLoadedAt: string | null;
  lastError: string | null;
}

/** Watches one catalog file and feeds the catalog its full state on each good version. */
export class FileSource {
  private watcher: FSWatcher | null = null;
  private poll: ReturnType<typeof setInterval> | null = null;
  private settle: ReturnType<typeof setTimeout> | null = null;
  private lastSig = '';
  private lastText: string | null = null;
  private loading: Promise<void> = Promise.resolve();
  private stopped = true;
  private readonly log: Logger;
  status: FileSourceStatus;

  constructor(private readonly deps: FileSourceDeps) {
    this.log = deps.logger;
    this.status = { path: deps.path, lastLoadedAt: null, lastError: null };
  }

  /** Loads the file once (resolving when done, good or bad) and starts watching. */
  async start(): Promise<void> {
    this.stopped = false;
    await this.reload('start');
    const dir = dirname(this.deps.path);
    const name = basename(this.deps.path);
    try {
      // Watch the directory, not the file: editors and ConfigMaps replace the file by rename.
      this.watcher = watch(dir, { persistent: false }, (_event, filename) => {
        if (!filename || filename === name || filename === '..data') this.kick();
      });
      this.watcher.on('error', (err) => this.log.warn('file watch failed; falling back to polling', { error: describeError(err) }));
    } catch (err) {
      this.log.warn('cannot watch the catalog directory; polling only', { dir, error: describeError(err) });
    }
    this.poll = setInterval(() => void this.checkSig(), this.deps.pollMs ?? 1000);
    this.poll.unref?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.poll) clearInterval(this.poll);
    if (this.settle) clearTimeout(this.settle);
    this.poll = this.settle = null;
    await this.loading;
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.settle) clearTimeout(this.settle);
    this.settle = setTimeout(() => void this.reload('change'), this.deps.settleMs ?? 50);
  }

  private async checkSig(): Promise<void> {
    try {
      const s = await stat(this.deps.path);
      if (`${s.ino}:${s.size}:${s.mtimeMs}` !== this.lastSig) this.kick();
    } catch {
      if (this.lastSig !== 'missing') this.kick();
    }
  }

  private reload(why: string): Promise<void> {
    this.loading = this.loading.then(() => this.load(why));
    return this.loading;
  }

  private async load(why: string): Promise<void> {
    if (this.stopped) return;
    const { path, catalog } = this.deps;
    let text: string;
    try {
      const s = await stat(path);
      this.lastSig = `${s.ino}:${s.size}:${s.mtimeMs}`;
      text = await readFile(path, 'utf8');
    } catch (err) {
      this.lastSig = 'missing';
      this.fail(`${path}: cannot read: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : describeError(err)}`);
      return;
    }
    if (text === this.lastText && why !== 'start') return;
    this.lastText = text;
    const parsed = parseCatalogText(text, this.deps.convert);
    if (parsed.errors.length) {
      for (const e of parsed.errors) this.log.error(`${path}:${e.line}: ${e.message}`);
      this.fail(`${path}:${parsed.errors[0]!.line}: ${parsed.errors[0]!.message}${parsed.errors.length > 1 ? ` (and ${parsed.errors.length - 1} more)` : ''}`);
      return;
    }
    for (const i of parsed.ignored) this.log.debug(`${path}:${i.line}: ignoring ${i.message} (not used by the catalog)`);
    const o = parsed.objects;
    catalog.replace(o, 'file', `loaded from ${path}`);
    this.status.lastLoadedAt = new Date().toISOString();
    if (this.status.lastError) this.log.info('catalog file is good again', { path });
    this.status.lastError = null;
    this.log.info(`catalog file ${why === 'start' ? 'loaded' : 'reloaded'}`, { path, services: o.services.length, endpoints: o.endpoints.length + o.endpointSlices.length, nodes: o.nodes.length });
  }

  private fail(msg: string): void {
    this.status.lastError = msg;
    const kept = this.deps.catalog.state().ready ? 'the last good catalog stays in force' : 'no catalog loaded yet';
    this.deps.catalog.setDetail(`catalog file has errors (${kept}): ${msg}`);
    this.log.error(`catalog file rejected; ${kept}`, { fix: 'correct the file; it is re-read on save' });
  }
}
