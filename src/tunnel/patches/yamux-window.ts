/**
 * tunnel/ — yamux window updates when half the receive window is used, not after every data frame.
 *
 * @libp2p/yamux 8 answers every data frame it receives with a WINDOW_UPDATE frame (YamuxStream.handleData calls
 * sendWindowUpdate, which sends whenever any of the window was used). On a session stream, where every proxied
 * connection is a handful of small frames each way, that is one more frame to encode, send, decode and dispatch
 * per frame. go-yamux and hashicorp/yamux send an update only once the unacknowledged part reaches half the
 * window; this does the same. The wire format is unchanged and any yamux peer accepts it: the sender still has
 * at least half a window (≥ 128 KiB) in hand when the update leaves. Frames with flags (SYN, ACK, FIN, RST) and
 * updates after a pause are sent as before.
 *
 * A patch of the library's class, applied once, when the first tunnel starts: the stream class is exported
 * (`@libp2p/yamux/stream`) but not its factory, so there is no option to pass. If the states it relies on are
 * not there (a yamux upgrade changed them), it leaves the library's own method in place and the tunnel says so.
 */
import { StreamState, YamuxStream } from '@libp2p/yamux/stream';

interface WindowFields {
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
}

let applied: boolean | null = null;

/** Install the policy; returns false (library method kept) when this yamux version does not look as expected. */
export function halfWindowUpdates(): boolean {
  if (applied !== null) return applied;
  const proto = YamuxStream.prototype as unknown as { sendWindowUpdate(this: WindowFields): void };
  const original = proto.sendWindowUpdate;
  if (typeof original !== 'function' || typeof StreamState.Paused !== 'number' || typeof StreamState.SYNReceived !== 'number') return (applied = false);
  proto.sendWindowUpdate = function (this: WindowFields) {
    // Skip only the plain "some of the window was used" update while more than half the window is left. The
    // states are checked, not getSendFlags(): that call moves Init → SYNSent and SYNReceived → Established.
    const s = this.state;
    if (s !== StreamState.Init && s !== StreamState.SYNReceived && s !== StreamState.Paused
      && typeof this.recvWindow === 'number' && this.recvWindowCapacity > this.recvWindow / 2) return;
    original.call(this);
  };
  return (applied = true);
}
