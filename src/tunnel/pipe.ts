/**
 * tunnel/ — a libp2p stream seen as a socket (a Pipe, dial/contract.ts), so the pump (dial/pump.ts) drives a
 * tunnel stream exactly like a Bun socket: `write()` returns how much was taken, `drain` says when to
 * write again, `pause()`/`resume()` stop and start the other side's sends, FIN and reset map to close/abort.
 *
 * Backpressure: a libp2p stream accepts any amount into its own write buffer and its `drain` only means the
 * muxer can take more (measured: a splice fed by Bun's 512 KiB socket reads then buffered without bound, 2.4 GB
 * of RSS; waiting for the buffer to empty bounded it to 90-170 MB and raised throughput).
 * So `write()` refuses bytes while the stream's buffer holds more than HIGH_WATER, and `drain` is reported once
 * the buffer is under LOW_WATER (checked on the stream's 'drain' and 'idle' events): memory per stream stays
 * bounded, and the buffer never runs dry while the socket has data.
 */
import type { Stream } from '@libp2p/interface';
import type { Uint8ArrayList } from 'uint8arraylist';
import type { Pipe, PipeHandlers } from '../dial/contract.ts';

export const HIGH_WATER = 1024 * 1024;
export const LOW_WATER = 256 * 1024;


/**
 * pause()/resume() of a libp2p stream throw once its readable side is closing or closed; a socket's do not, and
 * the splices and the proxy call them whenever their other side asks (a reset can land between a reply and the
 * proxy pairing with it). On a closed stream they are no-ops: its close event does the rest.
 */
export function pauseStream(s: Stream): void {
  if (s.readStatus !== 'closing' && s.readStatus !== 'closed') s.pause();
}

export function resumeStream(s: Stream): void {
  if (s.readStatus !== 'closing' && s.readStatus !== 'closed') s.resume();
}


export class StreamPipe implements Pipe {
  private refused = false;
  private done = false;

  constructor(readonly stream: Stream, private readonly h: PipeHandlers) {
    stream.maxReadBufferLength = 4 * 1024 * 1024;
    stream.addEventListener('message', (evt) => {
      const d = evt.data as Uint8Array | Uint8ArrayList;
      if (d instanceof Uint8Array) h.data(d);
      else for (const b of d) h.data(b);
    });
    const maybeDrain = (): void => {
      if (this.refused && stream.writeBufferLength <= LOW_WATER) {
        this.refused = false;
        h.drain();
      }
    };
    stream.addEventListener('drain', maybeDrain);
    stream.addEventListener('idle', maybeDrain);
    stream.addEventListener('remoteCloseWrite', () => h.end());
    stream.addEventListener('close', (evt) => {
      if (this.done) return;
      this.done = true;
      h.close(evt.error != null);
    });
  }

  write(chunk: Uint8Array): number {
    if (this.done || this.stream.writeStatus !== 'writable') return chunk.length; // nowhere to go; close follows
    if (this.stream.writeBufferLength > HIGH_WATER) {
      this.refused = true;
      return 0;
    }
    this.stream.send(chunk);
    return chunk.length;
  }

  /** FIN: our writing side ends once the buffered bytes are sent; reading continues. */
  shutdown(): void {
    if (this.stream.writeStatus === 'writable') this.stream.close().catch(() => {});
  }

  /** Both directions are done (or the other side gave up): close, and reset if the remote still sends. */
  end(): void {
    if (this.done) return;
    const s = this.stream;
    s.close()
      .then(() => {
        if (s.status !== 'closed' && s.remoteWriteStatus === 'writable') s.abort(new Error('closed while the remote was still sending'));
      })
      .catch(() => {});
  }

  terminate(): void {
    if (this.done) return;
    this.done = true;
    this.stream.abort(new Error('the other side of the tunnelled connection was reset'));
  }

  pause(): void {
    pauseStream(this.stream);
  }

  resume(): void {
    resumeStream(this.stream);
  }
}
