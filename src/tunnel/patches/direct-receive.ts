/**
 * tunnel/ — a stream's bytes handed straight to its one reader, without a 'message' event, when nothing is held.
 *
 * @libp2p/utils 7 AbstractMessageStream.onData() (what yamux calls for every data frame) appends the frame to
 * the stream's read buffer, then dispatchReadBuffer() copies the buffer's list, empties it, builds a
 * StreamMessageEvent and dispatches it through the native EventTarget to a wrapper that calls the listener. A
 * session stream (session.ts) has exactly one reader, and a proxied request is a few small frames each way, so
 * that machinery was a visible share of each agent's CPU per connection. A stream given a direct receiver
 * (`receiveDirectly`) gets each frame's bytes by a plain call whenever the library would have dispatched them at
 * once: readable (not paused, not closing), nothing held in the read buffer. Otherwise (paused, bytes held,
 * closing) the library's own path runs, and its 'message' event reaches the same reader, so order and
 * backpressure are unchanged. What dispatchReadBuffer does afterwards (closing the readable side once the
 * remote has finished writing) is done here too.
 *
 * A prototype patch, applied once when the first tunnel starts, like yamux-window.ts; if the class does not look
 * as expected, the library's method stays (every frame takes the event path) and the tunnel says so.
 */
import { AbstractMessageStream } from '@libp2p/utils';
import type { Uint8ArrayList } from 'uint8arraylist';

const RECEIVER = Symbol('edgemesh.directReceiver');

interface Receiving {
  readStatus: string;
  remoteWriteStatus: string;
  readBuffer: { byteLength: number };
  onData(data: Uint8Array | Uint8ArrayList): void;
  maybeDispatchEnd(): void;
  [RECEIVER]?: (data: Uint8Array | Uint8ArrayList) => void;
}

let applied: boolean | null = null;

/** Install the shortcut; false when this @libp2p/utils does not have what it relies on (nothing changed). */
export function directReceive(): boolean {
  if (applied !== null) return applied;
  const proto = AbstractMessageStream.prototype as unknown as Receiving;
  const original = proto.onData;
  if (typeof original !== 'function' || typeof proto.maybeDispatchEnd !== 'function') return (applied = false);
  proto.onData = function (this: Receiving, data) {
    const receive = this[RECEIVER];
    if (receive === undefined || data.byteLength === 0 || this.readStatus !== 'readable' || this.readBuffer.byteLength !== 0) {
      original.call(this, data);
      return;
    }
    receive(data);
    if (this.readBuffer.byteLength === 0 && this.remoteWriteStatus === 'closed') {
      this.readStatus = 'closed';
      this.maybeDispatchEnd();
    }
  };
  return (applied = true);
}

/**
 * Hand `stream`'s bytes to `fn` directly while nothing is held (directReceive() installed); `fn` must be the
 * same reader as the stream's 'message' listener, which still gets what arrives while paused or held.
 */
export function receiveDirectly(stream: object, fn: (data: Uint8Array | Uint8ArrayList) => void): void {
  (stream as Receiving)[RECEIVER] = fn;
}
