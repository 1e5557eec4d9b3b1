/**
 * A small typed schema for EdgeMesh's YAML configuration. One declaration gives four things that must never
 * drift apart: the TypeScript type, the complete defaults, the merge of a user file onto the defaults (with the
 * original's semantics), and the validation messages.
 *
 * Merge semantics follow the Go original (it decodes YAML → JSON into a Go struct of defaults): present scalars overwrite, nested
 * objects merge field by field, lists replace, `null` keeps the default, and keys match case-insensitively.
 * Unlike the original, an unknown key is an error with a did-you-mean hint, and every problem is reported at once.
 */
import { isIP } from 'node:net';

export interface ConfigIssue {
  /** Canonical key path, e.g. `modules.edgeTunnel.listenPort` or `modules.edgeTunnel.relayNodes[0].nodeName`. */
  path: string;
  message: string;
  /** Where in the file (1-based), when known. */
  line?: number;
  col?: number;
  /** A condition of this machine (a file that does not exist here), not of the file: `config check` warns. */
  machine?: boolean;
}

export interface Field<T> {
  readonly kind: string;
  /** A fresh default value (objects and lists are never shared between configs). */
  defaults(): T;
  /** Merge user input onto `base`; append problems to `issues`; return the merged value (base on error). */
  merge(base: T, input: unknown, path: string, issues: ConfigIssue[]): T;
  /** One line for docs: allowed values. */
  readonly allowed: string;
}

export type Infer<F> = F extends Field<infer T> ? T : never;

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function scalar<T>(kind: string, allowed: string, def: T, parse: (v: unknown) => { ok: true; value: T } | { ok: false; reason: string }): Field<T> {
  return {
    kind,
    allowed,
    defaults: () => def,
    merge(base, input, path, issues) {
      if (input === null || input === undefined) return base;
      const r = parse(input);
      if (r.ok) return r.value;
      issues.push({ path, message: `${show(input)} ${r.reason}` });
      return base;
    },
  };
}

export function str(def: string, opts: { check?: (v: string) => string | null; allowed?: string } = {}): Field<string> {
  return scalar('string', opts.allowed ?? 'a string', def, (v) => {
    if (typeof v !== 'string') return { ok: false, reason: 'is not a string' };
    const bad = opts.check?.(v);
    return bad ? { ok: false, reason: bad } : { ok: true, value: v };
  });
}

export function oneOf<const V extends string>(def: V, values: readonly V[]): Field<V> {
  const allowed = `one of ${values.join(', ')}`;
  return scalar('enum', allowed, def, (v) => {
    if (typeof v === 'string') {
      // Exact first; the original's enums are case-sensitive strings, but accept a case-only typo with its
      // canonical spelling rather than failing a whole node over it.
      const hit = values.find((x) => x === v) ?? values.find((x) => x.toLowerCase() === v.toLowerCase());
      if (hit) return { ok: true, value: hit };
    }
    return { ok: false, reason: `is not ${allowed}` };
  });
}

export function bool(def: boolean): Field<boolean> {
  return scalar('bool', 'true or false', def, (v) => (typeof v === 'boolean' ? { ok: true, value: v } : { ok: false, reason: 'is not a boolean (true or false)' }));
}

/**
 * A number in [min, max]. The reason says which way a value missed: not a number at all, not a whole number,
 * or out of range (so "-5" for a port reads "is out of range", not "is not a port").
 */
function ranged(kind: string, allowed: string, def: number, min: number, max: number, whole: boolean): Field<number> {
  return scalar(kind, allowed, def, (v) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) return { ok: false, reason: `is not ${allowed}` };
    if (whole && !Number.isInteger(v)) return { ok: false, reason: `is not a whole number: expected ${allowed}` };
    if (v < min || v > max) return { ok: false, reason: `is out of range: expected ${allowed}` };
    return { ok: true, value: v };
  });
}

export function int(def: number, min = -(2 ** 31), max = 2 ** 31 - 1): Field<number> {
  return ranged('int', `an integer (${min}-${max})`, def, min, max, true);
}

export function num(def: number, min: number, max = Number.MAX_SAFE_INTEGER): Field<number> {
  return ranged('number', `a number (${min}-${max})`, def, min, max, false);
}

/** A TCP/UDP port. `allowZero` for fields where 0 means "none" or "kernel-assigned". */
export function port(def: number, allowZero = false): Field<number> {
  const lo = allowZero ? 0 : 1;
  return ranged('port', `a port (${lo}-65535)`, def, lo, 65535, true);
}

export function list<T>(item: Field<T>, def: () => T[] = () => []): Field<T[]> {
  return {
    kind: 'list',
    allowed: `a list of ${item.allowed}`,
    defaults: def,
    merge(base, input, path, issues) {
      if (input === null || input === undefined) return base;
      if (!Array.isArray(input)) {
        issues.push({ path, message: `${show(input)} is not a list` });
        return base;
      }
      // Lists replace (never merge element-wise): each element merges onto the element default.
      const before = issues.length;
      const out = input.map((v, i) => item.merge(item.defaults(), v, `${path}[${i}]`, issues));
      return issues.length === before ? out : base;
    },
  };
}

/** A map of strings to strings (labels); replaces the default as a whole, as lists do. */
export function strMap(def: () => Record<string, string>): Field<Record<string, string>> {
  return {
    kind: 'map',
    allowed: 'a map of strings',
    defaults: def,
    merge(base, input, path, issues) {
      if (input === null || input === undefined) return base;
      if (typeof input !== 'object' || Array.isArray(input)) {
        issues.push({ path, message: `${show(input)} is not a map of strings` });
        return base;
      }
      const out: Record<string, string> = {};
      for (const [k, v] of Object.entries(input as Record<string, unknown>)) {
        if (typeof v !== 'string') {
          issues.push({ path: `${path}.${k}`, message: `${show(v)} is not a string` });
          return base;
        }
        out[k] = v;
      }
      return out;
    },
  };
}

export function levenshtein(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0]!;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j]!;
      dp[j] = Math.min(dp[j]! + 1, dp[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length]!;
}

export function didYouMean(key: string, candidates: readonly string[]): string | undefined {
  const k = key.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = levenshtein(k, c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

type Shape = Record<string, Field<unknown>>;
type ObjOf<S extends Shape> = { [K in keyof S]: Infer<S[K]> };

export interface ObjectField<S extends Shape> extends Field<ObjOf<S>> {
  readonly shape: S;
}

export function obj<S extends Shape>(shape: S): ObjectField<S> {
  const keys = Object.keys(shape);
  const byLower = new Map(keys.map((k) => [k.toLowerCase(), k]));
  return {
    kind: 'object',
    allowed: 'an object',
    shape,
    defaults() {
      const out: Record<string, unknown> = {};
      for (const k of keys) out[k] = shape[k]!.defaults();
      return out as ObjOf<S>;
    },
    merge(base, input, path, issues) {
      if (input === null || input === undefined) return base;
      if (typeof input !== 'object' || Array.isArray(input)) {
        issues.push({ path: path || '(top level)', message: `${show(input)} is not an object` });
        return base;
      }
      const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
      const seen = new Map<string, string>();
      for (const [rawKey, value] of Object.entries(input as Record<string, unknown>)) {
        const canonical = byLower.get(rawKey.toLowerCase());
        const keyPath = path ? `${path}.${canonical ?? rawKey}` : (canonical ?? rawKey);
        if (!canonical) {
          const hint = didYouMean(rawKey, keys);
          issues.push({ path: path ? `${path}.${rawKey}` : rawKey, message: `unknown key${hint ? ` (did you mean "${hint}"?)` : ''}` });
          continue;
        }
        const dup = seen.get(canonical);
        if (dup !== undefined) {
          issues.push({ path: keyPath, message: `given twice (as "${dup}" and "${rawKey}"; keys are case-insensitive)` });
          continue;
        }
        seen.set(canonical, rawKey);
        out[canonical] = shape[canonical]!.merge(out[canonical], value, keyPath, issues);
      }
      return out as ObjOf<S>;
    },
  };
}

// ---- reusable value checks (each returns the reason a value is wrong, or null) ----

export function checkIP(v: string): string | null {
  return isIP(v) ? null : 'is not an IP address';
}

export function checkIPv4(v: string): string | null {
  return isIP(v) === 4 ? null : 'is not an IPv4 address';
}

/** `host:port`, `[v6]:port`; host must be an IP literal (the agent binds it). */
export function parseHostPort(v: string): { host: string; port: number } | null {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(v) ?? /^([^:[\]]+):(\d+)$/.exec(v);
  if (!m) return null;
  const port = Number(m[2]);
  if (!isIP(m[1]!) || !Number.isInteger(port) || port < 0 || port > 65535) return null;
  return { host: m[1]!, port };
}

export function checkHostPort(v: string): string | null {
  return parseHostPort(v) ? null : 'is not an address of the form IP:PORT (e.g. 127.0.0.1:10551 or [::1]:10551)';
}

export function checkAbsPathOrEmpty(v: string): string | null {
  return v === '' || v.startsWith('/') ? null : 'is not an absolute path';
}

export function checkCIDR(v: string): string | null {
  const m = /^(.+)\/(\d{1,3})$/.exec(v);
  if (!m) return 'is not a CIDR (e.g. 10.244.0.0/16)';
  const fam = isIP(m[1]!);
  const bits = Number(m[2]);
  if (!fam || bits > (fam === 4 ? 32 : 128)) return 'is not a CIDR (e.g. 10.244.0.0/16)';
  return null;
}
