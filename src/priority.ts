/**
 * The agent's CPU priority (commonConfig.nice). The data path (proxy listener, tunnel) runs on one JavaScript
 * thread; on a board whose workloads keep every core busy, the kernel's fair scheduler gives that thread only its
 * share against them, and measured with a busy loop on each core, the agents of a tunnel were runnable but
 * waiting for a CPU half of the time and moved a quarter of their quiet throughput (docs/benchmarks.md). At nice
 * -10 they got nearly all of it back. The Go original spreads its work over several threads and so gets more
 * shares; a nice value is our way to the same place.
 *
 * Linux keeps a nice value per thread: every thread of the process is set, and threads started later (the splice
 * worker) inherit it. Lowering it needs root or CAP_SYS_NICE.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { describeError } from './errors.ts';

export interface PriorityState {
  wanted: number;
  /** The main thread's nice value now. */
  actual: number;
  /** Why `wanted` could not be set, or null. */
  error: string | null;
}

export function applyNice(wanted: number): PriorityState {
  let actual = getPriority(0);
  if (actual === wanted) return { wanted, actual, error: null };
  let error: string | null = null;
  let tids: string[] = [];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    tids = ['0'];
  }
  for (const t of tids) {
    try {
      setPriority(Number(t), wanted);
    } catch (err) {
      // A thread that ended meanwhile is not an error; a refusal is the same for every thread.
      if (/ESRCH/.test(describeError(err))) continue;
      error = /EACCES|EPERM/.test(describeError(err)) ? 'needs root or CAP_SYS_NICE' : describeError(err);
      break;
    }
  }
  actual = getPriority(0);
  return { wanted, actual, error };
}
