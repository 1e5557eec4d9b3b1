/**
 * tunnel/ — the connection protector of the private network: which of the two PSK forms a connection uses.
 *
 *   - "stream": the libp2p private network ("pnet", /key/swarm/psk/1.0.0/): every raw connection is XORed with
 *     XSalsa20 keyed by the pre-shared key, each direction with the nonce its sender chose. Wire-compatible with
 *     go-libp2p's and js-libp2p's protector, so the Go original's nodes can join with the same PSK file. It has
 *     no MAC: integrity and peer authentication are the job of the TLS layer above it (docs/security.md).
 *   - "handshake": nothing here; the connection goes on in the clear to TLS, which refuses to finish unless both
 *     sides prove the PSK over the TLS session's exporter (psk-admission.ts). Each byte is then encrypted once,
 *     not twice: XSalsa20 cost ~40% of the agents' CPU per bulk byte (docs/benchmarks.md).
 *
 * A dialer uses its configured form. A listener accepts both: the first bytes of a "handshake" dialer are the
 * multistream-select header in the clear, which a pnet dialer's random 24-byte nonce starts with only by a
 * 2^-160 chance. Both forms require the PSK, so accepting both downgrades nothing; it lets nodes of either form,
 * and the Go original's, reach this one.
 *
 * Our own pnet instead of @libp2p/pnet because that one's WASM cipher dies after ~16 MiB of bulk traffic
 * ("WebAssembly.Memory.grow would exceed the memory's declared maximum size", on Bun and Node) and is 4x slower than libsodium; the engine comes from cipher.ts.
 */
import type { AbortOptions, ConnectionProtector, MultiaddrConnection } from '@libp2p/interface';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';
import type { Uint8ArrayList } from 'uint8arraylist';
import { type XSalsa20Engine, XSalsa20Stream } from './cipher.ts';

const NONCE_LENGTH = 24;
/** What a multistream-select dialer sends first: varint 19, then "/multistream/1.0.0\n". */
const MSS_HEADER = new TextEncoder().encode('\x13/multistream/1.0.0\n');

export type PskMode = 'handshake' | 'stream';

export interface PnetInit {
  /** The 32-byte key (psk.ts derives it the original's way). */
  key: Uint8Array;
  engine: XSalsa20Engine;
  /** The form this node dials with (a listener accepts both). */
  mode: PskMode;
  /** Nonce exchange deadline: a peer without the PSK may never answer. */
  timeoutMs: number;
  /** Counts connections refused or timed out at this layer. */
  onFailure?: (why: string) => void;
}

/** True when `conn` went through the XSalsa20 layer (the TLS encrypter then needs no PSK proof). */
export function isPnetConnection(conn: unknown): boolean {
  return conn instanceof PnetConnection;
}

class PnetConnection extends AbstractMultiaddrConnection {
  private readonly inbound: XSalsa20Stream;
  private readonly outbound: XSalsa20Stream;

  constructor(private readonly inner: MultiaddrConnection, init: PnetInit, localNonce: Uint8Array, remoteNonce: Uint8Array) {
    super({ remoteAddr: inner.remoteAddr, direction: inner.direction, log: inner.log.newScope('pnet') });
    this.inbound = new XSalsa20Stream(init.engine, init.key, remoteNonce);
    this.outbound = new XSalsa20Stream(init.engine, init.key, localNonce);
    inner.addEventListener('message', (evt) => {
      const data = evt.data;
      if (data instanceof Uint8Array) {
        // The transport hands us a buffer of its own for each read: decrypt in place, no copy.
        this.inbound.xor(data);
        this.onData(data);
      } else {
        for (const buf of data) {
          this.inbound.xor(buf);
          this.onData(buf);
        }
      }
    });
    inner.addEventListener('drain', () => {
      this.blocked = false;
      this.onMuxerDrain();
    });
    inner.addEventListener('close', (evt) => {
      if (evt.error != null) {
        if (evt.local) this.abort(evt.error);
        else this.onRemoteReset();
      } else {
        this.onTransportClosed();
      }
    });
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    this.flush();
    await this.inner.close(options);
  }

  /**
   * Frames written in one turn of the event loop (a yamux header and its data, a window update, several streams'
   * small messages) are gathered and XORed and written once, in a microtask: one cipher call and one syscall
   * instead of one per frame, and no added latency (the microtask runs before the loop polls again).
   */
  private queued: Uint8Array[] = [];
  private queuedBytes = 0;
  private flushScheduled = false;
  private blocked = false;

  sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean } {
    // Views only: nothing rewrites these buffers before the microtask below, which makes the one copy (the cipher
    // works in place, and the layers above may still hold their plaintext).
    for (const b of data) {
      this.queued.push(b);
      this.queuedBytes += b.byteLength;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flush);
    }
    // Past 1 MiB in one turn, flush now and report the transport's backpressure.
    if (this.queuedBytes >= 1024 * 1024) this.flush();
    return { sentBytes: data.byteLength, canSendMore: !this.blocked };
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.queued.length === 0) return;
    const buf = new Uint8Array(this.queuedBytes);
    let o = 0;
    for (const b of this.queued) {
      buf.set(b, o);
      o += b.length;
    }
    this.queued = [];
    this.queuedBytes = 0;
    this.outbound.xor(buf);
    if (this.inner.status !== 'open') return;
    this.blocked = !this.inner.send(buf);
  };

  sendReset(err: Error): void {
    this.inner.abort(err);
  }

  sendPause(): void {
    this.inner.pause();
  }

  sendResume(): void {
    this.inner.resume();
  }
}

class PnetProtector implements ConnectionProtector {
  readonly [Symbol.toStringTag] = 'edgemesh/pnet';
  constructor(private readonly init: PnetInit) {}

  async protect(connection: MultiaddrConnection, options?: AbortOptions): Promise<MultiaddrConnection> {
    // Dialing in the handshake form: no bytes here; the TLS encrypter sees a connection that is not a
    // PnetConnection and demands the proof (it fails closed: anything but a PnetConnection must prove).
    if (connection.direction === 'outbound' && this.init.mode === 'handshake') return connection;
    const localNonce = crypto.getRandomValues(new Uint8Array(NONCE_LENGTH));
    const signal = options?.signal ? AbortSignal.any([options.signal, AbortSignal.timeout(this.init.timeoutMs)]) : AbortSignal.timeout(this.init.timeoutMs);
    const bytes = byteStream(connection);
    let remote: Uint8ArrayList;
    try {
      if (connection.direction === 'inbound') {
        // Nothing is sent before the dialer's first bytes say which form it uses.
        const head = await bytes.read({ bytes: MSS_HEADER.length, signal });
        const first = head.subarray(); // exactly MSS_HEADER.length bytes
        if (Buffer.from(first.buffer, first.byteOffset, first.byteLength).equals(MSS_HEADER)) {
          const raw = bytes.unwrap(); // puts back what was read beyond the header
          raw.unshift(head); // and the header before it, for multistream-select
          return raw;
        }
        const [rest] = await Promise.all([bytes.read({ bytes: NONCE_LENGTH - MSS_HEADER.length, signal }), bytes.write(localNonce, { signal })]);
        head.append(rest);
        remote = head;
      } else {
        [remote] = await Promise.all([bytes.read({ bytes: NONCE_LENGTH, signal }), bytes.write(localNonce, { signal })]);
      }
    } catch (e) {
      this.init.onFailure?.((e as Error).name === 'TimeoutError' || signal.aborted ? 'timeout' : 'error');
      throw e;
    }
    return new PnetConnection(bytes.unwrap(), this.init, localNonce, remote.subarray());
  }
}

/** A libp2p `connectionProtector` factory. */
export function pnet(init: PnetInit): () => ConnectionProtector {
  return () => new PnetProtector(init);
}
