/**
 * obs/ — logging, metrics and the admin HTTP server.
 *
 * The logger is injected into every module (never imported as a global) so tests can capture what a module says
 * and so each line names its component: `2026-11-25T10:00:00.000Z INFO  catalog: applied 3 services`.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'text' | 'json';
export type LogFields = Record<string, unknown>;

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger for a sub-component; its name is appended: `catalog` → `catalog.file`. */
  child(component: string): Logger;
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go; stderr by default so stdout stays clean for command output. */
  write?: (line: string) => void;
  now?: () => Date;
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /^[\w./:@-]*$/.test(v) && v !== '' ? v : JSON.stringify(v);
  if (v instanceof Error) return JSON.stringify(v.message);
  return JSON.stringify(v) ?? String(v);
}

export function createLogger(component: string, opts: LoggerOptions = {}): Logger {
  const threshold = LEVELS[opts.level ?? 'info'];
  const format = opts.format ?? 'text';
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const now = opts.now ?? (() => new Date());
  const emit = (level: LogLevel, msg: string, fields?: LogFields): void => {
    if (LEVELS[level] < threshold) return;
    if (format === 'json') {
      write(JSON.stringify({ ts: now().toISOString(), level, component, msg, ...fields }));
      return;
    }
    let line = `${now().toISOString()} ${level.toUpperCase().padEnd(5)} ${component}: ${msg}`;
    if (fields) for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${formatValue(v)}`;
    write(line);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (c) => createLogger(component ? `${component}.${c}` : c, opts),
    enabled: (level) => LEVELS[level] >= threshold,
  };
}

/** A logger that keeps lines in memory; for tests that assert what was reported. */
export function createMemoryLogger(level: LogLevel = 'debug'): Logger & { lines: string[] } {
  const lines: string[] = [];
  const logger = createLogger('test', { level, write: (l) => lines.push(l) });
  return Object.assign(logger, { lines });
}

/**
 * A gate for log lines that others can provoke (refusals of strangers' connections): true at most once every
 * `ms` milliseconds; the caller counts every event in a metric and logs only when the gate is open.
 *   const warn = everyMs(10_000); if (warn()) log.warn(...)
 */
export function everyMs(ms: number, now: () => number = Date.now): () => boolean {
  let last = -Infinity;
  return () => {
    const t = now();
    if (t - last < ms) return false;
    last = t;
    return true;
  };
}
