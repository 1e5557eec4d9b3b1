#!/usr/bin/env bun
/**
 * Listener model for the proxy: one listener per service port (the original's model; what we ship) vs one
 * transparent listener that reads each connection's original destination with getsockopt(SO_ORIGINAL_DST)
 * through bun:ffi. The transparent model saves a listener (one fd, some memory) per service port and costs a
 * syscall through FFI plus a map lookup per connection. This measures both sides.
 * Usage: bun bench/listener-model.ts
 */
import { dlopen, FFIType, ptr } from 'bun:ffi';

const SOL_IP = 0, SO_ORIGINAL_DST = 80;
const libc = dlopen(process.platform === 'linux' ? 'libc.so.6' : 'libc.dylib', {
  getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
});

// Cost per connection: one getsockopt(SO_ORIGINAL_DST) on an accepted TCP socket's fd. On a connection that was
// not NATed the kernel answers ENOENT after the same lookup, so the cost is representative.
const addr = new Uint8Array(16);
const len = new Uint32Array([16]);
let fd = -1;
const server = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { open(s) { fd = (s as unknown as { fd: number }).fd ?? -1; }, data() {} } });
const client = await Bun.connect({ hostname: '127.0.0.1', port: server.port, socket: { data() {} } });
while (fd < 0) await Bun.sleep(1);
const N = 200_000;
const pa = ptr(addr), pl = ptr(len);
let t0 = performance.now();
for (let i = 0; i < N; i++) {
  len[0] = 16;
  libc.symbols.getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, pa, pl);
}
const perCallUs = ((performance.now() - t0) * 1000) / N;
client.end();
server.stop(true);

// Cost per service port in the per-port model: memory and one fd per idle listener.
const rss0 = process.memoryUsage.rss();
const listeners: { stop(closeActive?: boolean): void }[] = [];
t0 = performance.now();
for (let i = 0; i < 2000; i++) listeners.push(Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } }));
const openMs = performance.now() - t0;
Bun.gc(true);
const perListenerKiB = (process.memoryUsage.rss() - rss0) / 2000 / 1024;
for (const l of listeners) l.stop(true);

console.log(JSON.stringify({ getsockoptPerConnectionUs: +perCallUs.toFixed(3), perListenerKiB: +perListenerKiB.toFixed(2), open2000ListenersMs: +openMs.toFixed(1) }, null, 2));
process.stderr.write(`transparent listener: +${perCallUs.toFixed(2)} µs per connection (getsockopt via bun:ffi)\nper-port listeners: ${perListenerKiB.toFixed(1)} KiB and one fd per service port; 2,000 opened in ${openMs.toFixed(0)} ms\n`);
