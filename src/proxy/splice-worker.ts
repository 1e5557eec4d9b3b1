/**
 * proxy/splice-worker — the bulk path's thread: moves bytes between handed-over socket pairs with splice(2)
 * through a pipe per direction, so the bytes never enter JavaScript or user-space memory.
 *
 * It runs its own epoll loop through bun:ffi and blocks in epoll_wait; a Worker blocked there never sees a
 * postMessage, so commands arrive through a ring in a SharedArrayBuffer and a wake-up eventfd (see splicer.ts).
 * Completions go back with postMessage, which needs nothing from this thread's event loop.
 *
 * Per direction: splice(src → pipe), splice(pipe → dst), non-blocking, edge-triggered epoll on both sockets.
 * A FIN from one side is passed on with shutdown(SHUT_WR) once its pipe is empty; an error (RST) on one side
 * resets the other (SO_LINGER 0, then close); the pair is done when both directions have ended. Work per wake-up
 * is bounded per pair (BUDGET) and unfinished pairs are revisited first, so one fast stream cannot starve others.
 */
import { dlopen, FFIType, read as ptrRead } from 'bun:ffi';
import { EAGAIN, EINTR, O_CLOEXEC, O_NONBLOCK, closeWithReset } from '../net/linux.ts';
import { CMD_ADD, CMD_CLOSE, CMD_STOP, type SpliceDone, type SpliceInit, ringCapacity, slotOffset } from './splice-shared.ts';

declare const self: Worker;

const libc = dlopen('libc.so.6', {
  splice: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.u32], returns: FFIType.i32 },
  pipe2: { args: [FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
  epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64_fast },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
  shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
});
// ssize_t results are read as int32: splice never returns more than a pipe holds (≤ 1 MiB here), and the low
// half of the return register is the value on both x86_64 and arm64; numbers avoid BigInt on the hot path.
const L = libc.symbols;

const SPLICE_F_MOVE = 1;
const SPLICE_F_NONBLOCK = 2;
const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;
const EPOLLRDHUP = 0x2000;
const EPOLLET = 0x80000000;
const EPOLL_CTL_ADD = 1;
const F_SETPIPE_SZ = 1031;
const SHUT_WR = 1;
/** x86_64 packs struct epoll_event (12 bytes); other architectures align its u64 (16 bytes). */
const EV_SIZE = process.arch === 'x64' ? 12 : 16;
const EV_DATA = process.arch === 'x64' ? 4 : 8;
const MAX_EVENTS = 256;
/** Bytes one pair may move per wake-up before others get their turn. */
const BUDGET = 4 * 1024 * 1024;

function errno(): number {
  return ptrRead.i32(L.__errno_location()!, 0);
}

/** One direction: src → pipe → dst. */
interface Dir {
  src: number;
  dst: number;
  pr: number;
  pw: number;
  /** Bytes in the pipe. */
  held: number;
  /** src said FIN. */
  eof: boolean;
  /** FIN passed on to dst. */
  shut: boolean;
  moved: number;
}

interface Pair {
  id: number;
  slot: number;
  a: number;
  b: number;
  up: Dir;
  down: Dir;
  lastActive: number;
  queued: boolean;
}

let pipeSize = 0;
let idleMs = 0;
let ring: Int32Array;
let wakeFd = -1;
let ep = -1;
const pairs: (Pair | null)[] = [];
const free: number[] = [];
const byId = new Map<number, Pair>();
/** Pairs that used up their budget with work left: visited before waiting again. */
let again: Pair[] = [];
const evbuf = new Uint8Array(EV_SIZE * MAX_EVENTS);
const evview = new DataView(evbuf.buffer);
const one = new Uint8Array(EV_SIZE);
const oneView = new DataView(one.buffer);
const pipeFds = new Int32Array(2);
const scratch = new Uint8Array(8);

function register(fd: number, key: number): boolean {
  oneView.setUint32(0, (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) >>> 0, true);
  oneView.setUint32(EV_DATA, key, true);
  oneView.setUint32(EV_DATA + 4, 0, true);
  return L.epoll_ctl(ep, EPOLL_CTL_ADD, fd, one) === 0;
}

function newPipe(): [number, number] | null {
  if (L.pipe2(pipeFds, O_NONBLOCK | O_CLOEXEC) !== 0) return null;
  const r = pipeFds[0]!;
  const w = pipeFds[1]!;
  if (pipeSize > 0) L.fcntl(w, F_SETPIPE_SZ, pipeSize); // best effort: capped by /proc/sys/fs/pipe-max-size
  return [r, w];
}

function add(id: number, a: number, b: number): void {
  const p1 = newPipe();
  const p2 = p1 ? newPipe() : null;
  const slot = free.length ? free.pop()! : pairs.length;
  const dir = (src: number, dst: number, p: [number, number]): Dir => ({ src, dst, pr: p[0], pw: p[1], held: 0, eof: false, shut: false, moved: 0 });
  if (!p1 || !p2 || !register(a, slot * 2) || !register(b, slot * 2 + 1)) {
    // Out of fds or epoll refused: reset both rather than leave a silent connection behind.
    for (const fd of [p1?.[0], p1?.[1], p2?.[0], p2?.[1]]) if (fd !== undefined) L.close(fd);
    closeWithReset(L, a);
    closeWithReset(L, b);
    free.push(slot);
    post({ id, up: 0, down: 0, reset: true });
    return;
  }
  const pair: Pair = { id, slot, a, b, up: dir(a, b, p1), down: dir(b, a, p2), lastActive: Date.now(), queued: false };
  pairs[slot] = pair;
  byId.set(id, pair);
  // Bytes may have arrived between the hand-over and the registration: edge-triggered epoll reports the
  // current state once on ADD, but pump now anyway (cheap: EAGAIN) so nothing waits on an edge.
  work(pair);
}

function post(d: SpliceDone): void {
  self.postMessage(d);
}

function finish(p: Pair, rst: boolean): void {
  if (pairs[p.slot] !== p) return;
  pairs[p.slot] = null;
  free.push(p.slot);
  byId.delete(p.id);
  // Closing the fds removes them from the epoll set (these are the last references: the main thread closed its own).
  if (rst) {
    closeWithReset(L, p.a);
    closeWithReset(L, p.b);
  } else {
    L.close(p.a);
    L.close(p.b);
  }
  L.close(p.up.pr);
  L.close(p.up.pw);
  L.close(p.down.pr);
  L.close(p.down.pw);
  post({ id: p.id, up: p.up.moved, down: p.down.moved, reset: rst });
}

/**
 * Moves what it can in one direction. Returns bytes moved, or -1 after a fatal error (the pair is reset).
 * Stops at EAGAIN on either end (the next edge brings it back) or when `budget` is spent.
 */
function pump(d: Dir, budget: number): number {
  let moved = 0;
  for (;;) {
    if (d.held > 0) {
      const n = L.splice(d.pr, null, d.dst, null, d.held, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0) {
        const e = errno();
        if (e === EAGAIN || e === EINTR) return moved;
        return -1;
      }
      d.held -= n;
      moved += n;
      d.moved += n;
      if (d.held > 0) continue; // a partial write: try again, EAGAIN ends it
    }
    if (d.eof) {
      if (!d.shut) {
        d.shut = true;
        L.shutdown(d.dst, SHUT_WR);
      }
      return moved;
    }
    if (moved >= budget) return moved;
    const n = L.splice(d.src, null, d.pw, null, 1 << 30, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d.held += n;
      continue;
    }
    if (n === 0) {
      d.eof = true;
      continue;
    }
    const e = errno();
    if (e === EAGAIN || e === EINTR) return moved;
    return -1;
  }
}

/** Both directions of a pair, within its budget; unfinished work is queued for the next round. */
function work(p: Pair): void {
  if (pairs[p.slot] !== p) return;
  const u = pump(p.up, BUDGET);
  const d = u < 0 ? -1 : pump(p.down, BUDGET);
  if (u < 0 || d < 0) {
    finish(p, true);
    return;
  }
  if (u + d > 0 && idleMs > 0) p.lastActive = Date.now();
  if (p.up.shut && p.down.shut) {
    finish(p, false);
    return;
  }
  if ((u >= BUDGET || d >= BUDGET) && !p.queued) {
    p.queued = true;
    again.push(p);
  }
}

function commands(): boolean {
  L.read(wakeFd, scratch, 8);
  let r = Atomics.load(ring, 1);
  const w = Atomics.load(ring, 0);
  const cap = ringCapacity(ring);
  let running = true;
  while (r !== w) {
    const o = slotOffset(r, cap);
    const op = ring[o]!;
    if (op === CMD_ADD) add(ring[o + 1]!, ring[o + 2]!, ring[o + 3]!);
    else if (op === CMD_CLOSE) {
      const p = byId.get(ring[o + 1]!);
      if (p) finish(p, ring[o + 2] === 1);
    } else if (op === CMD_STOP) running = false;
    r = (r + 1) | 0;
  }
  Atomics.store(ring, 1, r);
  return running;
}

function sweepIdle(now: number): void {
  for (const p of pairs) if (p && now - p.lastActive > idleMs) finish(p, false);
}

function loop(): void {
  let lastSweep = Date.now();
  for (;;) {
    const timeout = again.length ? 0 : idleMs > 0 ? 1000 : -1;
    const n = L.epoll_wait(ep, evbuf, MAX_EVENTS, timeout);
    if (n < 0 && errno() !== EINTR) throw new Error(`epoll_wait failed: errno ${errno()}`);
    const round = again;
    again = [];
    for (const p of round) {
      p.queued = false;
      work(p);
    }
    for (let i = 0; i < n; i++) {
      const key = evview.getUint32(i * EV_SIZE + EV_DATA, true);
      if (key === 0xffffffff) {
        if (!commands()) return;
        continue;
      }
      const p = pairs[key >>> 1];
      if (p) work(p);
    }
    if (idleMs > 0) {
      const now = Date.now();
      if (now - lastSweep >= 1000) {
        lastSweep = now;
        sweepIdle(now);
      }
    }
  }
}

self.onmessage = (ev: MessageEvent<SpliceInit>) => {
  self.onmessage = null;
  ({ pipeSize, idleMs } = ev.data);
  ring = new Int32Array(ev.data.ring);
  wakeFd = ev.data.wakeFd;
  ep = L.epoll_create1(O_CLOEXEC);
  oneView.setUint32(0, EPOLLIN, true);
  oneView.setUint32(EV_DATA, 0xffffffff, true);
  oneView.setUint32(EV_DATA + 4, 0, true);
  if (ep < 0 || L.epoll_ctl(ep, EPOLL_CTL_ADD, wakeFd, one) !== 0) {
    self.postMessage({ id: -1, up: 0, down: 0, reset: true } satisfies SpliceDone);
    return;
  }
  self.postMessage({ id: 0, up: 0, down: 0, reset: false } satisfies SpliceDone); // ready
  loop();
  // Stop: whatever is still spliced is closed with a FIN, as the listener closes its connections on stop.
  for (const p of pairs) if (p) finish(p, false);
  L.close(ep);
  self.postMessage({ id: -2, up: 0, down: 0, reset: false } satisfies SpliceDone); // stopped
};
