/**
 * tunnel/ — a stream paused again while resume() hands it its buffered bytes stays paused for the muxer too.
 *
 * @libp2p/utils 7 AbstractMessageStream.resume() first dispatches the bytes that arrived while paused, then calls
 * sendResume() (yamux: state Established, and a window update). A reader that pauses during that dispatch (the
 * endpoint socket it writes to is full, which under load is the common case) leaves the stream paused for
 * reading but yamux no longer paused: it goes on granting window with every frame, the remote keeps sending, the
 * read buffer passes maxReadBufferLength and the stream is aborted with StreamBufferError. Seen as a 1 GiB upload
 * reset at 100-1,000 MB on a loaded machine (every few runs with two CPU hogs), on the receiving agent. The same
 * path serves the relay server's pipes (libp2p's utils.pipe pauses one stream when the other is full).
 *
 * The fix: after the library's resume(), a stream that is paused again is told sendPause() once more. Wire and
 * API are unchanged. A prototype patch, applied once with the first tunnel start, like yamux-window.ts.
 * test/tunnel-streams.test.ts reproduces the abort without it (after some 10 MiB) in well under a second.
 */
import { AbstractMessageStream } from '@libp2p/utils';

interface Resumable {
  readStatus: string;
  resume(): void;
  /** Abstract in the base class: each stream kind (yamux, our connections) has its own. */
  sendPause?(): void;
}

let applied: boolean | null = null;

/** Install the fix; false when this @libp2p/utils does not have the methods it relies on (nothing changed). */
export function pausedStaysPaused(): boolean {
  if (applied !== null) return applied;
  const proto = AbstractMessageStream.prototype as unknown as Resumable;
  const original = proto.resume;
  if (typeof original !== 'function' || original.length !== 0) return (applied = false);
  proto.resume = function (this: Resumable) {
    original.call(this);
    if (this.readStatus === 'paused') this.sendPause?.();
  };
  return (applied = true);
}
