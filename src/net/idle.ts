/**
 * net/ — inactivity timeouts on Bun sockets.
 *
 * Bun's `socket.timeout(seconds)` (Bun.listen / Bun.connect) is a one-shot deadline counted from the moment it
 * is armed: neither reads nor writes push it back (measured on Bun 1.4.4: a socket armed with 3 s that streams
 * 2 GB and receives a byte every 500 ms still gets its timeout handler after ~4 s; the granularity is ~4 s; see
 * also oven-sh/bun#35935). Used as an idle timeout, it closes busy connections: every tunnel connection at
 * 120 s, every proxied connection at edgeProxy.tcpIdleTimeout, every DNS-over-TCP client at tcpIdleTimeout.
 *
 * So the owner of a socket stamps its activity (`Date.now()` per read or write burst: ~20 ns, next to the
 * microseconds a data callback costs), and its timeout handler asks `idleFor` whether the socket really was
 * idle for the whole period; if not, the deadline is re-armed for the time that is left.
 */

/** A socket's deadline, as Bun has it. */
export interface Deadline {
  timeout(seconds: number): void;
}

/**
 * Call from a socket's timeout handler: true when nothing happened for `seconds` since `lastActive` (close it);
 * otherwise the deadline is re-armed for what is left of the period and false is returned.
 */
export function idleFor(s: Deadline, lastActive: number, seconds: number, now = Date.now()): boolean {
  const leftMs = lastActive + seconds * 1000 - now;
  if (leftMs <= 0) return true;
  s.timeout(Math.max(1, Math.ceil(leftMs / 1000)));
  return false;
}
