#!/usr/bin/env bun
/**
 * How fast could a user-space proxy in Bun relay short HTTP connections on this machine? A reference point for
 * the listener path, not a product: a bare L4 relay on its own epoll loop through bun:ffi (accept4, a
 * non-blocking connect, read/write through one buffer, FIN passed on, no policy, no timeouts, no metrics), run
 * next to the shipped listener (TcpServicePort) and haproxy (mode tcp), all in their own processes on CPU 0, with
 * nginx and wrk on CPU 1. Prints, per round, req/s (ratio to direct) and the relay's CPU per request, for wrk with a
 * new connection per request and with keep-alive.
 * The question it answers: is the listener's gap to haproxy on new connections JavaScript's or the socket
 * layer's, and what does the kernel's per-connection work leave for any relay.
 * Usage: bun bench/l4-floor.ts [--seconds=4] [--rounds=3] [--connections=50]   (needs wrk, nginx-light, haproxy)
 *        bun bench/l4-floor.ts --relay=<listen port>:<target port>      (the bare relay alone, on 127.0.0.1)
 *        bun bench/l4-floor.ts --listener=<target port> [--hash-header=NAME]
 *                    (the shipped listener alone, printing its port; with a DestinationRule-like policy hashing by
 *                    that header: for A/B of the listener's own cost, e.g. under `perf stat -e task-clock -p`)
 */
import { dlopen, FFIType, read as ptrRead } from 'bun:ffi';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EAGAIN, EINTR, O_CLOEXEC, O_NONBLOCK, closeWithReset } from '../src/net/linux.ts';
import { freePort } from '../test/helpers.ts';
import { cpuSeconds, spawnPinned, startHaproxy, startProxy, wrkRun, writeNginxConf } from './tools.ts';
import { spawnChild } from './children.ts';

const opt = (k: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1];
const log = (s: string) => process.stderr.write(s + '\n');

/** The bare relay: one epoll loop, edge-triggered, on this thread; never returns. */
function relay(listenPort: number, targetPort: number): never {
  const L = dlopen('libc.so.6', {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    accept4: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
    epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
    write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
    shutdown: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
  const errno = () => ptrRead.i32(L.__errno_location()!, 0);
  const EINPROGRESS = 115;
  const [AF_INET, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR, IPPROTO_TCP, TCP_NODELAY] = [2, 1, 1, 2, 6, 1];
  const [IN, OUT, ERR, RDHUP, ET] = [0x1, 0x4, 0x8, 0x2000, 0x80000000];
  const sockaddr = (port: number) => {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    b.set([127, 0, 0, 1], 4);
    return b;
  };
  const on = new Int32Array([1]);
  const lfd = L.socket(AF_INET, SOCK_STREAM | O_NONBLOCK | O_CLOEXEC, 0);
  L.setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, on, 4);
  // Accepted sockets inherit TCP_NODELAY from the listening socket: one call instead of one per connection.
  L.setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, on, 4);
  if (L.bind(lfd, sockaddr(listenPort), 16) !== 0 || L.listen(lfd, 4096) !== 0) throw new Error(`relay: cannot listen on ${listenPort}: errno ${errno()}`);
  const target = sockaddr(targetPort);
  const ep = L.epoll_create1(O_CLOEXEC);
  const ev = new Uint8Array(16);
  const evv = new DataView(ev.buffer);
  const EV = process.arch === 'x64' ? 12 : 16;
  const DATA = process.arch === 'x64' ? 4 : 8;
  const watch = (fd: number, mask: number) => {
    evv.setUint32(0, mask >>> 0, true);
    evv.setUint32(DATA, fd, true);
    L.epoll_ctl(ep, 1, fd, ev);
  };
  watch(lfd, IN);

  /** One socket of a pair; `pending` holds what its peer sent that it has not taken yet. */
  interface End { fd: number; peer: End; pending: Uint8Array | null; eof: boolean; shut: boolean; open: boolean; pair: { done: boolean } }
  const ends: (End | undefined)[] = [];
  const buf = new Uint8Array(64 * 1024);
  const end = (pair: { done: boolean }, fd: number, open: boolean) => ({ fd, pending: null, eof: false, shut: false, open, pair }) as unknown as End;
  const finish = (a: End, rst: boolean) => {
    if (a.pair.done) return;
    a.pair.done = true;
    for (const s of [a, a.peer]) {
      ends[s.fd] = undefined;
      if (rst) closeWithReset(L, s.fd);
      else L.close(s.fd);
    }
  };
  /** Writes what `dst` holds; false after a fatal error. */
  const flush = (dst: End): boolean => {
    const p = dst.pending!;
    const n = L.write(dst.fd, p, p.length);
    if (n < 0) return errno() === EAGAIN || errno() === EINTR ? true : (finish(dst, true), false);
    dst.pending = n === p.length ? null : p.slice(n);
    return true;
  };
  /** src → its peer until EAGAIN, a full peer or EOF; false once the pair is gone. */
  const pump = (src: End): boolean => {
    const dst = src.peer;
    if (!dst.open) return true;
    if (dst.pending && (!flush(dst) || dst.pending)) return !src.pair.done;
    while (!src.eof) {
      const n = L.read(src.fd, buf, buf.length);
      if (n > 0) {
        const w = L.write(dst.fd, buf, n);
        if (w < 0 && errno() !== EAGAIN) return finish(src, true), false;
        if (w < n) {
          dst.pending = buf.slice(Math.max(w, 0), n);
          return true;
        }
      } else if (n === 0) src.eof = true;
      else if (errno() === EAGAIN || errno() === EINTR) return true;
      else return finish(src, true), false;
    }
    if (!dst.shut) {
      dst.shut = true;
      L.shutdown(dst.fd, 1);
    }
    if (src.eof && dst.eof && src.shut && dst.shut) return finish(src, false), false;
    return true;
  };
  const events = new Uint8Array(EV * 256);
  const ev2 = new DataView(events.buffer);
  for (;;) {
    const n = L.epoll_wait(ep, events, 256, -1);
    for (let i = 0; i < n; i++) {
      const mask = ev2.getUint32(i * EV, true);
      const fd = ev2.getUint32(i * EV + DATA, true);
      if (fd === lfd) {
        for (;;) {
          const c = L.accept4(lfd, null, null, O_NONBLOCK | O_CLOEXEC);
          if (c < 0) break;
          const u = L.socket(AF_INET, SOCK_STREAM | O_NONBLOCK | O_CLOEXEC, 0);
          L.setsockopt(u, IPPROTO_TCP, TCP_NODELAY, on, 4);
          const pair = { done: false };
          const a = end(pair, c, true);
          const b = end(pair, u, false);
          a.peer = b;
          b.peer = a;
          ends[c] = a;
          ends[u] = b;
          if (L.connect(u, target, 16) !== 0 && errno() !== EINPROGRESS) {
            finish(a, true);
            continue;
          }
          watch(c, IN | OUT | RDHUP | ET);
          watch(u, IN | OUT | RDHUP | ET);
        }
        continue;
      }
      const s = ends[fd];
      if (!s) continue;
      if (mask & ERR) {
        finish(s, true);
        continue;
      }
      if (!s.open && mask & OUT) s.open = true;
      if (pump(s)) pump(s.peer);
    }
  }
}

if (opt('relay')) {
  const [l, t] = opt('relay')!.split(':').map(Number);
  relay(l!, t!);
}
if (opt('listener')) {
  const header = opt('hash-header');
  const p = startProxy(Number(opt('listener')), undefined, header ? { kind: 'consistent-hash', hash: { kind: 'header', name: header } } : undefined);
  console.log(p.port);
} else if (!opt('relay')) {
  const seconds = Number(opt('seconds') ?? 4);
  const rounds = Number(opt('rounds') ?? 3);
  const conns = Number(opt('connections') ?? 50);
  for (const t of ['wrk', 'nginx', 'haproxy', 'taskset']) if (!Bun.which(t)) { log(`needs ${t}: apt-get install wrk nginx-light haproxy`); process.exit(1); }
  const dir = mkdtempSync(join(tmpdir(), 'edgemesh-l4floor-'));
  chmodSync(dir, 0o755); // nginx workers run unprivileged
  const procs: ReturnType<typeof Bun.spawn>[] = [];
  try {
    const [pNginx, pHa, pRelay] = [await freePort(), await freePort(), await freePort()];
    const nginxConf = writeNginxConf(dir, [`127.0.0.1:${pNginx}`]);
    procs.push(spawnPinned('1', ['nginx', '-c', nginxConf, '-p', dir]));
    const ha = startHaproxy(dir, pHa, pNginx);
    const bare = spawnChild(['taskset', '-c', '0', process.execPath, import.meta.path, `--relay=${pRelay}:${pNginx}`], { stdout: 'ignore', stderr: 'inherit' });
    const lis = spawnChild(['taskset', '-c', '0', process.execPath, import.meta.path, `--listener=${pNginx}`], { stdout: 'pipe', stderr: 'inherit' });
    procs.push(ha, bare, lis);
    const reader = lis.stdout.getReader();
    const pLis = Number(new TextDecoder().decode((await reader.read()).value).trim());
    await Bun.sleep(700);
    const targets = [['direct', pNginx, 0], ['listener', pLis, lis.pid], ['bare relay', pRelay, bare.pid], ['haproxy', pHa, ha.pid]] as const;
    for (let round = 1; round <= rounds; round++) {
      for (const close of [true, false]) {
        let direct = 0;
        const out: string[] = [];
        for (const [name, port, pid] of targets) {
          const c0 = pid ? await cpuSeconds(pid) : 0;
          const r = await wrkRun('1', `http://127.0.0.1:${port}/`, conns, seconds, close);
          const cpu = pid ? `, ${((((await cpuSeconds(pid)) - c0) * 1e6) / (r.rps * seconds)).toFixed(0)} µs CPU per request` : '';
          if (!pid) direct = r.rps;
          out.push(`${name} ${r.rps.toFixed(0)}${pid ? ` (${(r.rps / direct).toFixed(2)}${cpu})` : ''}`);
          if (close) await Bun.sleep(2500); // TIME_WAIT sockets from the last run drain a little
        }
        console.log(`round ${round}, ${close ? 'new connection per request' : 'keep-alive'}: ${out.join('; ')}`);
      }
    }
  } finally {
    for (const p of procs) p.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}
