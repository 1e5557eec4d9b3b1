/**
 * The catalog on disk, so a node restarted while the cloud is unreachable still serves its services.
 *
 * Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory) and debounced after
 * changes, so a burst of watch events costs one write. A corrupt or foreign file is reported and ignored: the
 * snapshot can only ever help, never stop the agent.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EdgeMeshError, describeError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { Catalog, CatalogOrigin } from './catalog.ts';
import { type CatalogObjects, KINDS, emptyObjects } from './model.ts';

export const SNAPSHOT_FORMAT = 'edgemesh.catalog/v1';

export interface SnapshotFile {
  format: typeof SNAPSHOT_FORMAT;
  savedAt: string;
  origin: CatalogOrigin;
  nodeName: string;
  objects: CatalogObjects;
}

export interface LoadedSnapshot {
  savedAt: string;
  origin: CatalogOrigin;
  objects: CatalogObjects;
}

const isRec = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Structural check of what we wrote ourselves; enough that a damaged file cannot feed consumers garbage. */
function validate(data: unknown): CatalogObjects {
  if (!isRec(data)) throw new Error('not a JSON object');
  if (data.format !== SNAPSHOT_FORMAT) throw new Error(`format is ${JSON.stringify(data.format)}, expected ${SNAPSHOT_FORMAT}`);
  if (!isRec(data.objects)) throw new Error('"objects" is missing');
  const out = emptyObjects();
  for (const kind of KINDS) {
    const list = (data.objects as Record<string, unknown>)[kind];
    if (list === undefined) continue;
    if (!Array.isArray(list)) throw new Error(`objects.${kind} is not a list`);
    list.forEach((item, i) => {
      if (!isRec(item) || typeof item.name !== 'string' || (kind !== 'nodes' && typeof item.namespace !== 'string')) {
        throw new Error(`objects.${kind}[${i}] has no name`);
      }
      if ((kind === 'endpoints' || kind === 'endpointSlices') && !Array.isArray(item.endpoints)) throw new Error(`objects.${kind}[${i}].endpoints is not a list`);
      if (kind === 'services' && (!Array.isArray(item.ports) || !Array.isArray(item.clusterIPs))) throw new Error(`objects.${kind}[${i}] is not a service`);
    });
    (out[kind] as unknown[]) = list;
  }
  return out;
}

export async function loadSnapshot(path: string): Promise<LoadedSnapshot | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new EdgeMeshError('SNAPSHOT_IO', `cannot read catalog snapshot ${path}: ${describeError(err)}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new EdgeMeshError('SNAPSHOT_CORRUPT', `catalog snapshot ${path} is not valid JSON (${describeError(err)})`);
  }
  try {
    const objects = validate(data);
    const d = data as Record<string, unknown>;
    return { savedAt: String(d.savedAt ?? ''), origin: (d.origin as CatalogOrigin) ?? 'none', objects };
  } catch (err) {
    throw new EdgeMeshError('SNAPSHOT_CORRUPT', `catalog snapshot ${path} is damaged: ${describeError(err)}`);
  }
}

/** Write atomically; the file may hold Secrets for the gateway, so it is 0600. */
export async function writeSnapshot(path: string, file: SnapshotFile): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(file));
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  // fsync the directory so the rename itself survives a power cut (edge boards lose power).
  const dh = await open(dirname(path), 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

export interface SnapshotWriterDeps {
  catalog: Catalog;
  path: string;
  nodeName: string;
  logger: Logger;
  /** Quiet time after the last change before writing. */
  debounceMs?: number;
}

/** Persists the catalog after changes, debounced; `stop()` writes any pending change before returning. */
export class SnapshotWriter {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private unsubscribe: (() => void) | null = null;
  private writing: Promise<void> = Promise.resolve();
  private dirty = false;
  private lastError: string | null = null;
  savedAt: string | null = null;

  constructor(private readonly deps: SnapshotWriterDeps) {}

  start(): void {
    this.unsubscribe = this.deps.catalog.subscribe(() => {
      // A snapshot restored from disk is not news; only write what a live source has said.
      if (this.deps.catalog.state().origin === 'snapshot') return;
      this.dirty = true;
      if (this.timer) clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.save(), this.deps.debounceMs ?? 1000);
    });
  }

  status(): { path: string; savedAt: string | null; error: string | null } {
    return { path: this.deps.path, savedAt: this.savedAt, error: this.lastError };
  }

  /** Write now if anything changed since the last write. */
  save(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.dirty) return this.writing;
    this.dirty = false;
    const { catalog, path, nodeName, logger } = this.deps;
    const file: SnapshotFile = { format: SNAPSHOT_FORMAT, savedAt: new Date().toISOString(), origin: catalog.state().origin, nodeName, objects: catalog.objects() };
    this.writing = this.writing.then(async () => {
      try {
        await writeSnapshot(path, file);
        this.savedAt = file.savedAt;
        if (this.lastError) logger.info('catalog snapshot written again', { path });
        this.lastError = null;
      } catch (err) {
        this.lastError = describeError(err);
        logger.error('cannot write the catalog snapshot; the node will not survive a restart offline', { path, error: this.lastError, fix: 'check that commonConfig.stateDir is writable' });
      }
    });
    return this.writing;
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    await this.save();
  }
}
