/**
 * net/ — outbound TCP connections that all leave from one local port, for TCP hole punching.
 *
 * A NAT that maps by source (MASQUERADE keeps the source port when it can) then shows every peer the same public
 * address:port for this node: the port a relay observes is the port a punch must come from. Bun.connect cannot
 * choose its local port, so the socket is made through libc (bun:ffi): SO_REUSEADDR + SO_REUSEPORT, bind to the
 * port, non-blocking connect, wait until writable, check SO_ERROR, then hand the connected fd to Bun.connect({ fd }).
 * An "anchor" socket bound to the port (never listening) keeps other programs off it.
 *
 *   const out = FixedPort.open();            // null when libc/FFI is unavailable (then dial normally)
 *   const fd = await out.connect('203.0.113.7', 20006, 5000);
 *   const sock = await Bun.connect({ fd, socket: handlers });
 */
import { EdgeMeshError } from '../errors.ts';
import { SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET } from './linux.ts';

const AF_INET = 2;
const SOCK_STREAM = 1;
const SO_REUSEADDR = 2;
const SO_ERROR = 4;
const SO_REUSEPORT = 15;
const POLLOUT = 4;
const EINPROGRESS = 115;
const EADDRNOTAVAIL = 99;
const EADDRINUSE = 98;

const SYMBOLS = {
  socket: { args: ['i32', 'i32', 'i32'], returns: 'i32' },
  setsockopt: { args: ['i32', 'i32', 'i32', 'ptr', 'u32'], returns: 'i32' },
  getsockopt: { args: ['i32', 'i32', 'i32', 'ptr', 'ptr'], returns: 'i32' },
  getsockname: { args: ['i32', 'ptr', 'ptr'], returns: 'i32' },
  bind: { args: ['i32', 'ptr', 'u32'], returns: 'i32' },
  connect: { args: ['i32', 'ptr', 'u32'], returns: 'i32' },
  poll: { args: ['ptr', 'u64', 'i32'], returns: 'i32' },
  close: { args: ['i32'], returns: 'i32' },
  __errno_location: { args: [], returns: 'ptr' },
} as const;

type Libc = import('bun:ffi').Library<typeof SYMBOLS>['symbols'];

/** Errors a caller can act on: the 4-tuple is taken (e.g. TIME_WAIT after a recent connection to the same peer). */
export class FixedPortBusy extends Error {
  override name = 'FixedPortBusy';
}

function sockaddrIn(ip: string, port: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) throw new EdgeMeshError('INTERNAL', `not an IPv4 address: ${ip}`);
  b.set(parts, 4);
  return b;
}

export class FixedPort {
  private constructor(private readonly libc: Libc, private readonly ffi: typeof import('bun:ffi'), private readonly anchor: number, readonly port: number) {}

  /** Reserve a local port (0 = any free one) for outbound connections, or null when FFI/libc is unavailable. */
  static open(port = 0): FixedPort | null {
    let ffi: typeof import('bun:ffi');
    let libc: Libc;
    try {
      ffi = require('bun:ffi') as typeof import('bun:ffi');
      libc = ffi.dlopen(process.arch === 'arm64' || process.arch === 'x64' ? 'libc.so.6' : 'libc.so', SYMBOLS).symbols;
    } catch {
      return null;
    }
    const fd = FixedPort.socketFor(libc, ffi);
    if (fd < 0) return null;
    if (libc.bind(fd, ffi.ptr(sockaddrIn('0.0.0.0', port)), 16) !== 0) {
      libc.close(fd);
      return null;
    }
    const addr = new Uint8Array(16);
    const len = new Uint32Array([16]);
    libc.getsockname(fd, ffi.ptr(addr), ffi.ptr(len));
    const bound = new DataView(addr.buffer).getUint16(2, false);
    return new FixedPort(libc, ffi, fd, bound);
  }

  private static socketFor(libc: Libc, ffi: typeof import('bun:ffi')): number {
    const fd = libc.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fd;
    const one = new Int32Array([1]);
    libc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ffi.ptr(one), 4);
    libc.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, ffi.ptr(one), 4);
    return fd;
  }

  private errno(): number {
    return this.ffi.read.i32(this.libc.__errno_location()!, 0);
  }

  /**
   * Connect from the fixed port; resolves with the connected fd (owned by the caller from then on). Throws
   * FixedPortBusy when that source port cannot be used for this destination right now.
   */
  async connect(ip: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<number> {
    const { libc, ffi } = this;
    const fd = FixedPort.socketFor(libc, ffi);
    if (fd < 0) throw new Error(`socket() failed: errno ${this.errno()}`);
    const fail = (e: Error): never => {
      libc.close(fd);
      throw e;
    };
    if (libc.bind(fd, ffi.ptr(sockaddrIn('0.0.0.0', this.port)), 16) !== 0) {
      const e = this.errno();
      fail(e === EADDRINUSE ? new FixedPortBusy(`local port ${this.port} is in use`) : new Error(`bind to port ${this.port} failed: errno ${e}`));
    }
    if (libc.connect(fd, ffi.ptr(sockaddrIn(ip, port)), 16) !== 0) {
      const e = this.errno();
      if (e === EADDRNOTAVAIL || e === EADDRINUSE) fail(new FixedPortBusy(`${ip}:${port} from local port ${this.port} is taken (errno ${e})`));
      if (e !== EINPROGRESS) fail(new Error(`connect to ${ip}:${port} failed: errno ${e}`));
    }
    // Wait for the connect to finish without blocking the event loop: poll(…, 0) with a growing pause.
    const pfd = new Uint8Array(8);
    const pv = new DataView(pfd.buffer);
    pv.setInt32(0, fd, true);
    pv.setInt16(4, POLLOUT, true);
    const deadline = performance.now() + timeoutMs;
    for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
      if (signal?.aborted) fail(new Error('aborted'));
      pv.setInt16(6, 0, true);
      const n = libc.poll(ffi.ptr(pfd), 1, 0);
      if (n > 0) break;
      if (performance.now() > deadline) fail(new Error(`connect to ${ip}:${port} timed out after ${timeoutMs} ms`));
      await Bun.sleep(wait);
    }
    const err = new Int32Array(1);
    const len = new Uint32Array([4]);
    libc.getsockopt(fd, SOL_SOCKET, SO_ERROR, ffi.ptr(err), ffi.ptr(len));
    if (err[0] !== 0) fail(new Error(`connect to ${ip}:${port} failed: errno ${err[0]}${err[0] === 111 ? ' (connection refused)' : err[0] === 110 ? ' (timed out)' : ''}`));
    return fd;
  }

  close(): void {
    this.libc.close(this.anchor);
  }
}
