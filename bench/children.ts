/**
 * The processes a bench script starts (agents, haproxy, nginx, iperf3 servers, helpers): every one is killed
 * however the script ends — normally, by an exception, or by SIGINT/SIGTERM/SIGHUP (Ctrl-C, a closed terminal,
 * `timeout`) — so none is left behind holding a port on the node. Only SIGKILL of the script itself escapes this.
 *
 * Cleanups registered with `onExit` (deleting namespaces, tables) run after the children are killed, once.
 * They must be synchronous: on a signal the script exits right after them.
 */
import type { Subprocess } from 'bun';

const live = new Set<Subprocess>();
const cleanups: (() => void)[] = [];
let done = false;

function finish(): void {
  if (done) return;
  done = true;
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
  live.clear();
  for (const c of cleanups.splice(0).reverse()) {
    try { c(); } catch (err) { process.stderr.write(`cleanup failed: ${String(err)}\n`); }
  }
}

process.on('exit', finish);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: stopping every process this bench started\n`);
    finish();
    process.exit(code);
  });
}

/** Bun.spawn, with the child killed when this script ends. */
export const spawnChild: typeof Bun.spawn = ((...args: Parameters<typeof Bun.spawn>) => track(Bun.spawn(...args))) as typeof Bun.spawn;

/** Kill `p` when this script ends (for processes started elsewhere). */
export function track<T extends Subprocess>(p: T): T {
  live.add(p);
  void p.exited.then(() => live.delete(p));
  return p;
}

/** Run `fn` (synchronous) once when the script ends, after its children are killed. */
export function onExit(fn: () => void): void {
  cleanups.push(fn);
}
