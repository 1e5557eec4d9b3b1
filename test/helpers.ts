/** Shared test helpers: free ports, temp dirs, real agent processes, polling. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Subprocess } from 'bun';

export const ROOT = resolve(import.meta.dir, '..');
export const MAIN = join(ROOT, 'src/cli/main.ts');
export const isRoot = process.getuid?.() === 0;

export async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } });
  const p = l.port;
  l.stop(true);
  return p;
}

/**
 * A free port below the kernel's ephemeral range, for a listener that is closed and opened again during a test:
 * a port from freePort() is in that range, and between two listens the system's outgoing connections (under load,
 * thousands) can be given it as their local port, so the second listen fails with EADDRINUSE.
 */
export async function freeStablePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the default low bound
  }
  for (let i = 0; i < 200; i++) {
    const port = 10000 + Math.floor(Math.random() * Math.max(1, low - 10000));
    try {
      const l = Bun.listen({ hostname: '127.0.0.1', port, socket: { data() {} } });
      l.stop(true);
      return port;
    } catch {
      // taken: try another
    }
  }
  return freePort();
}

export function tempDir(prefix = 'edgemesh-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export async function waitFor<T>(fn: () => T | Promise<T>, what: string | (() => string), timeoutMs = 10_000, everyMs = 20): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  while (performance.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    await Bun.sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}${last ? ` (last error: ${String(last)})` : ''}`);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the CLI to completion. */
export async function runCli(args: string[], opts: { env?: Record<string, string>; cwd?: string; bin?: string[] } = {}): Promise<RunResult> {
  const proc = Bun.spawn([...(opts.bin ?? [process.execPath, MAIN]), ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    stdout: 'pipe',
    stderr: 'pipe',
    stdin: 'ignore',
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

export class AgentProcess {
  readonly proc: Subprocess<'ignore', 'pipe', 'pipe'>;
  private out = '';
  readonly exited: Promise<number>;

  constructor(args: string[], opts: { env?: Record<string, string>; bin?: string[] } = {}) {
    this.proc = Bun.spawn([...(opts.bin ?? [process.execPath, MAIN]), ...args], {
      cwd: ROOT,
      env: { ...process.env, ...opts.env },
      stdout: 'pipe',
      stderr: 'pipe',
      stdin: 'ignore',
    });
    const pump = async (s: ReadableStream<Uint8Array>) => {
      const dec = new TextDecoder();
      for await (const chunk of s) this.out += dec.decode(chunk, { stream: true });
    };
    void pump(this.proc.stdout);
    void pump(this.proc.stderr);
    this.exited = this.proc.exited;
  }

  get logs(): string {
    return this.out;
  }

  waitForLog(re: RegExp, timeoutMs = 10_000): Promise<RegExpExecArray> {
    return waitFor(() => re.exec(this.out), () => `log line ${re}\n--- logs ---\n${this.out}`, timeoutMs);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

export async function getJson<T = unknown>(url: string): Promise<T> {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return (await r.json()) as T;
}

export async function getText(url: string): Promise<{ status: number; body: string }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  return { status: r.status, body: await r.text() };
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
function deepMerge(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = isObj(v) && isObj(out[k]) ? deepMerge(out[k] as Obj, v) : v;
  return out;
}

/**
 * Write an agent config file with a free admin port and a private state dir; returns its path and admin URL.
 * `extra` (YAML) is merged over that base. DNS is off unless `extra` turns it on: edge mode enables it by
 * default on 169.254.96.16:53, which a test must never take on the host.
 */
export async function writeAgentConfig(dir: string, extra: string, role: 'agent' | 'gateway' = 'agent'): Promise<{ path: string; admin: string; stateDir: string }> {
  const port = await freePort();
  const stateDir = join(dir, 'state');
  const path = join(dir, `edgemesh-agent-${port}.yaml`);
  const base: Obj = { commonConfig: { stateDir, adminAddress: `127.0.0.1:${port}` }, ...(role === 'agent' ? { modules: { edgeDNS: { enable: false } } } : {}) };
  const parsed = extra.trim() ? (Bun.YAML.parse(extra) as Obj) : {};
  writeFileSync(path, JSON.stringify(deepMerge(base, parsed), null, 2));
  return { path, admin: `http://127.0.0.1:${port}`, stateDir };
}

/** Is anything listening on this TCP port on loopback? */
export async function listening(port: number): Promise<boolean> {
  try {
    const s = await Bun.connect({ hostname: '127.0.0.1', port, socket: { data() {} } });
    s.end();
    return true;
  } catch {
    return false;
  }
}

/**
 * An open/drain handler for a client socket that writes what `next()` yields with backpressure: a partial write
 * waits for drain (next() is asked again then, after `wrote` saw what the socket took). When next() yields null
 * the socket is half-closed once, if `fin`.
 */
export function writer(next: () => Uint8Array | null, wrote: (part: Uint8Array, whole: boolean) => void, fin = true): (s: { write(b: Uint8Array): number; shutdown(): void }) => void {
  let finished = false;
  return (s) => {
    for (;;) {
      const part = next();
      if (!part) {
        if (fin && !finished) s.shutdown();
        finished = true;
        return;
      }
      const n = s.write(part);
      if (n > 0) wrote(part.subarray(0, n), n === part.length);
      if (n < part.length) return;
    }
  };
}
