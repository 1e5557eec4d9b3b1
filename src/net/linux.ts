/**
 * net/ — the Linux ABI numbers the bun:ffi code shares (fixed-port.ts, the splice worker and its owner). These
 * are the asm-generic values: the same on x86_64 and arm64, the two targets.
 */
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
/** socket(2), pipe2(2) and eventfd(2) take the O_ flags' values. */
export const SOCK_NONBLOCK = O_NONBLOCK;
export const SOCK_CLOEXEC = O_CLOEXEC;
export const SOL_SOCKET = 1;
export const SO_LINGER = 13;
export const EINTR = 4;
export const EAGAIN = 11;

const linger0 = new Int32Array([1, 0]);

/** Closes a TCP socket with an RST (SO_LINGER 0), so a reset reaches its peer as one. */
export function closeWithReset(libc: { setsockopt(fd: number, level: number, name: number, value: Int32Array, len: number): unknown; close(fd: number): unknown }, fd: number): void {
  libc.setsockopt(fd, SOL_SOCKET, SO_LINGER, linger0, 8);
  libc.close(fd);
}
