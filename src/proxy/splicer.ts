/**
 * proxy/splicer — hands long-lived bulk TCP connections from the JavaScript splice to a worker thread that moves
 * their bytes with splice(2) (splice-worker.ts): no copy into JavaScript, and the main thread is free for new
 * connections and small requests.
 *
 * Only connections that have already moved `bulkBytes` are handed over (tcp.ts decides): a hand-over costs a
 * few syscalls and two pipes, which short requests would never earn back.
 *
 * Hand-over: both Bun sockets are paused, their fds duplicated (close-on-exec), then Bun's sockets are closed —
 * which closes only Bun's descriptors: with a duplicate open the kernel sends neither FIN nor RST (checked:
 * close(), not end() or terminate(), which would set SO_LINGER 0 on the shared socket). Bun still calls the
 * socket's close handler, so the caller detaches its state first. Commands go through a SharedArrayBuffer ring and
 * an eventfd because the worker sits in epoll_wait and would never see a postMessage.
 *
 * The worker (a second JavaScript VM: ~5 MiB RSS and a thread) starts on the first hand-over attempt, so a node
 * that never carries a bulk stream never pays for it; that first connection stays in JavaScript until it asks
 * again. Not available (no glibc to dlopen, no Worker, the worker failed to start): start() resolves false, it is
 * not tried again, and the JS splice keeps every connection.
 *
 *   const s = new BulkSplicer({ logger, pipeSize: 256 * 1024, idleTimeoutSec: 0 })
 *   s.handOver(client, upstream, (d) => … d.up, d.down, d.reset)   // 0 until the worker is up
 */
import type { Socket } from 'bun';
import { dlopen, FFIType } from 'bun:ffi';
import { describeError } from '../errors.ts';
import { O_CLOEXEC, O_NONBLOCK, closeWithReset } from '../net/linux.ts';
import type { Logger } from '../obs/logger.ts';
import { CMD_ADD, CMD_CLOSE, CMD_STOP, RING_HEADER, RING_SLOT, type SpliceDone, type SpliceInit, ringCapacity, slotOffset } from './splice-shared.ts';

/** Pipe capacity per direction: 64 KiB pipes were slower than JavaScript, 256 KiB and 1 MiB alike (benchmarks.md). */
export const DEFAULT_PIPE_SIZE = 256 * 1024;
/** See SplicerOptions.maxPairs. */
export const DEFAULT_MAX_PAIRS = 96;

export interface SplicerOptions {
  logger: Logger;
  /** Pipe capacity per direction (bytes; 0 = the kernel default, 64 KiB); DEFAULT_PIPE_SIZE if absent. */
  pipeSize?: number;
  /** Spliced pairs idle this long are closed (0 = never), as the listener's own idle timeout. */
  idleTimeoutSec: number;
  /** Commands that may wait for the worker at once; a full ring keeps a connection on the JS splice. */
  ringSlots?: number;
  /**
   * Pairs spliced at once; more stay on the JS splice. Pipe capacity counts against the user's
   * fs.pipe-user-pages-soft (64 MiB by default) for an agent without CAP_SYS_RESOURCE, past which the kernel gives
   * new pipes two pages: 96 pairs × 2 pipes × 256 KiB stays within it with room for the process's other pipes.
   * DEFAULT_MAX_PAIRS if absent.
   */
  maxPairs?: number;
}

export interface SplicerStats {
  handedOver: number;
  active: number;
  refused: number;
}

type Libc = {
  fcntl: (fd: number, cmd: number, arg: number) => number;
  setsockopt: (fd: number, level: number, name: number, value: Int32Array, len: number) => number;
  eventfd: (initval: number, flags: number) => number;
  write: (fd: number, buf: Uint8Array, n: number) => number | bigint;
  close: (fd: number) => number;
};

const F_DUPFD_CLOEXEC = 1030;

function openLibc(): Libc {
  const lib = dlopen('libc.so.6', {
    fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64_fast },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  });
  return lib.symbols as unknown as Libc;
}

/**
 * Where the worker's code is. In a compiled binary Bun keeps each extra entrypoint (scripts/build.ts lists this
 * one) under its virtual root by its path from the entrypoints' common ancestor, src/, and resolves a relative
 * Worker path against that root; from source, the file sits next to this one.
 */
function workerSpec(): string | URL {
  return import.meta.url.includes('/$bunfs/') ? './proxy/splice-worker.ts' : new URL('./splice-worker.ts', import.meta.url);
}

function fdOf(s: Socket<unknown>): number {
  return (s as unknown as { fd: number }).fd;
}

export class BulkSplicer {
  private libc: Libc | null = null;
  private worker: Worker | null = null;
  private ring: Int32Array | null = null;
  private wakeFd = -1;
  private nextId = 1;
  /** Pairs on the worker: their completion, and the descriptors it holds (to reset them if the worker dies). */
  private readonly waiting = new Map<number, { done: (d: SpliceDone) => void; fds: [number, number] }>();
  private readonly wake = new Uint8Array(new BigUint64Array([1n]).buffer);
  private starting: Promise<boolean> | null = null;
  private stopped: Promise<void> | null = null;
  private onStopped: (() => void) | null = null;
  readonly stats: SplicerStats = { handedOver: 0, active: 0, refused: 0 };
  private readonly pipeSize: number;
  private readonly maxPairs: number;

  constructor(private readonly o: SplicerOptions) {
    this.pipeSize = o.pipeSize ?? DEFAULT_PIPE_SIZE;
    this.maxPairs = o.maxPairs ?? DEFAULT_MAX_PAIRS;
  }

  get running(): boolean {
    return this.worker !== null && this.stopped === null;
  }

  /** Starts the worker (once; handOver() does it on first use); false, with a log line, when not available here. */
  start(): Promise<boolean> {
    if (this.stopped) return Promise.resolve(false);
    return (this.starting ??= this.spawn());
  }

  private async spawn(): Promise<boolean> {
    let worker: Worker | null = null;
    try {
      this.libc = openLibc();
      this.wakeFd = this.libc.eventfd(0, O_CLOEXEC | O_NONBLOCK);
      if (this.wakeFd < 0) throw new Error('eventfd failed');
      const slots = this.o.ringSlots ?? 4096;
      if (slots & (slots - 1)) throw new Error(`ringSlots must be a power of two, not ${slots}`);
      const sab = new SharedArrayBuffer((RING_HEADER + slots * RING_SLOT) * 4);
      this.ring = new Int32Array(sab);
      const w = (worker = new Worker(workerSpec()));
      const ready = new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 5000);
        w.onmessage = (ev: MessageEvent<SpliceDone>) => {
          const d = ev.data;
          if (d.id > 0) return this.done(d);
          clearTimeout(timer);
          if (d.id === 0) resolve(true);
          else if (d.id === -1) resolve(false);
          else this.onStopped?.();
        };
        w.onerror = (ev) => {
          clearTimeout(timer);
          if (this.worker === w) this.died(ev.message);
          else this.o.logger.warn('the splice worker failed; bulk connections stay on the JavaScript splice', { error: ev.message });
          resolve(false);
        };
        // Bun's own event: the thread is gone, for whatever reason.
        w.addEventListener('close', () => {
          if (this.worker === w && !this.stopped) this.died('the worker thread exited');
        });
      });
      w.postMessage({ ring: sab, wakeFd: this.wakeFd, pipeSize: this.pipeSize, idleMs: this.o.idleTimeoutSec * 1000 } satisfies SpliceInit);
      if (!(await ready)) throw new Error('the worker did not start');
      // Only now may connections be handed over: one sent to a worker that failed would be lost.
      this.worker = w;
      // The worker must not keep a stopping process alive; explicit stop() ends it.
      w.unref();
      this.o.logger.info('splice worker started: bulk connections move to splice(2)', { pipeSize: this.pipeSize, maxPairs: this.maxPairs });
      return true;
    } catch (err) {
      this.o.logger.warn('splice(2) bulk path not available; bulk connections stay on the JavaScript splice', { error: describeError(err) });
      worker?.terminate();
      this.closeWake();
      return false;
    }
  }

  /**
   * Moves a connected pair to the worker. The caller has detached its handlers' state from both sockets, has
   * nothing buffered for either, and gets `done` once the pair has closed. Returns the pair's id, or 0: nothing
   * changed, keep splicing in JavaScript.
   */
  handOver(client: Socket<unknown>, upstream: Socket<unknown>, done: (d: SpliceDone) => void): number {
    const ring = this.ring;
    const libc = this.libc;
    if (!this.running || !ring || !libc) {
      void this.start();
      return 0;
    }
    if (this.stats.active >= this.maxPairs || !this.hasRoom(ring)) {
      this.stats.refused++;
      return 0;
    }
    const da = libc.fcntl(fdOf(client), F_DUPFD_CLOEXEC, 0);
    if (da < 0) return 0;
    const db = libc.fcntl(fdOf(upstream), F_DUPFD_CLOEXEC, 0);
    if (db < 0) {
      libc.close(da);
      return 0;
    }
    client.pause();
    upstream.pause();
    const id = this.nextId++;
    this.enqueue(ring, libc, CMD_ADD, id, da, db);
    this.waiting.set(id, { done, fds: [da, db] });
    this.stats.handedOver++;
    this.stats.active++;
    // Bun's descriptors only: the duplicates keep both connections open.
    client.close();
    upstream.close();
    return id;
  }

  /** Closes a handed-over pair (FIN, or RST with `reset`); its `done` follows. */
  close(id: number, reset: boolean): void {
    this.command(CMD_CLOSE, id, reset ? 1 : 0);
  }

  /** Closes every spliced pair with a FIN and ends the worker. */
  stop(): Promise<void> {
    if (this.stopped) return this.stopped;
    const starting = this.starting ?? Promise.resolve(false);
    this.stopped = starting.then(() => this.end());
    return this.stopped;
  }

  private end(): Promise<void> {
    if (!this.worker) return Promise.resolve();
    const worker = this.worker;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      this.onStopped = () => {
        clearTimeout(timer);
        resolve();
      };
      this.command(CMD_STOP, 0, 0, true);
    }).then(() => {
      worker.terminate();
      this.worker = null;
      this.closeWake();
      // Anything the worker could not report is over now.
      for (const [id, w] of this.waiting) w.done({ id, up: 0, down: 0, reset: false });
      this.waiting.clear();
      this.stats.active = 0;
    });
  }

  private command(op: number, a: number, b: number, force = false): void {
    const ring = this.ring;
    if (!ring || !this.libc || (!this.running && !force)) return;
    // Close and stop must not be lost: the ring is sized far above the pairs in flight, so a full ring here
    // means the worker is wedged; the stop path's terminate() then ends it anyway.
    if (this.hasRoom(ring)) this.enqueue(ring, this.libc, op, a, b);
  }

  /** Whether the ring has a free slot (this thread writes [0], the worker advances [1]). */
  private hasRoom(ring: Int32Array): boolean {
    return ((ring[0]! - Atomics.load(ring, 1)) | 0) < ringCapacity(ring);
  }

  /** Appends a command (the caller checked hasRoom) and wakes the worker. */
  private enqueue(ring: Int32Array, libc: Libc, op: number, a: number, b: number, c = 0): void {
    const w = ring[0]!;
    const o = slotOffset(w, ringCapacity(ring));
    ring[o] = op;
    ring[o + 1] = a;
    ring[o + 2] = b;
    ring[o + 3] = c;
    Atomics.store(ring, 0, (w + 1) | 0);
    libc.write(this.wakeFd, this.wake, 8);
  }

  private closeWake(): void {
    if (this.wakeFd >= 0) this.libc?.close(this.wakeFd);
    this.wakeFd = -1;
  }

  private done(d: SpliceDone): void {
    const w = this.waiting.get(d.id);
    if (!w) return;
    this.waiting.delete(d.id);
    this.stats.active--;
    w.done(d);
  }

  /**
   * The worker died while running: nothing moves its pairs' bytes any more and their descriptors (process-wide)
   * would keep both connections open for ever. Reset them from here, free their slots, and hand nothing over
   * again (a worker that crashed once would crash again; the JavaScript splice carries on).
   */
  private died(why: string): void {
    const libc = this.libc;
    this.worker = null;
    const n = this.waiting.size;
    for (const [id, w] of this.waiting) {
      if (libc) for (const fd of w.fds) closeWithReset(libc, fd);
      this.stats.active--;
      w.done({ id, up: 0, down: 0, reset: true });
    }
    this.waiting.clear();
    this.closeWake();
    this.o.logger.error('the splice worker died; its connections were reset and bulk connections stay in JavaScript', { error: why, connections: n });
  }
}
