/** What the main thread and the splice worker share: the command ring's layout and the messages (see splicer.ts). */

/** Ring header: [0] = commands written (main thread), [1] = commands read (worker); both wrap as int32. */
export const RING_HEADER = 2;
/** One command: op, then three int32 arguments. */
export const RING_SLOT = 4;
/** add(id, clientFd, upstreamFd) */
export const CMD_ADD = 1;
/** close(id, reset ? 1 : 0) */
export const CMD_CLOSE = 2;
export const CMD_STOP = 3;

/** Commands a ring holds (a power of two, so the int32 counters may wrap). */
export function ringCapacity(ring: Int32Array): number {
  return (ring.length - RING_HEADER) / RING_SLOT;
}

/** Where command number `n` (the running count, wrapping as int32) sits in a ring of `cap` commands. */
export function slotOffset(n: number, cap: number): number {
  return RING_HEADER + (n & (cap - 1)) * RING_SLOT;
}

export interface SpliceInit {
  ring: SharedArrayBuffer;
  wakeFd: number;
  /** Pipe capacity per direction in bytes (F_SETPIPE_SZ); 0 = the kernel's default (64 KiB). */
  pipeSize: number;
  /** Close a pair after this long without traffic; 0 = never. */
  idleMs: number;
}

/** A pair is done (id > 0, bytes moved each way), or the worker is ready (id 0), failed (-1) or stopped (-2). */
export interface SpliceDone {
  id: number;
  up: number;
  down: number;
  reset: boolean;
}
