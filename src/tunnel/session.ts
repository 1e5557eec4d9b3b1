/**
 * tunnel/ — session streams: one tunnel stream carries proxied TCP connections one after another, instead of one
 * stream per connection (/libp2p/tunnel-proxy/1.0.0, which remains for UDP and for peers without sessions).
 *
 * Why: opening and closing a libp2p stream (yamux SYN and FIN, multistream-select's two messages each way, the
 * registrar's handler dispatch, a dozen event listeners) cost most of the ~0.7 ms of CPU each proxied connection
 * took in each agent, so new-connection HTTP through the tunnel ran at a small fraction of keep-alive HTTP. A
 * session keeps the stream and sends only what a connection needs.
 *
 * Wire (after multistream-select of SESSION_PROTOCOL), per connection:
 *   dialer   → CONNECT            varint length + the proxy protocol's protobuf message (protocol.ts)
 *   receiver → SUCCESS | FAILED   the same framing, the type field only; after FAILED the session is ready for the next CONNECT
 *   both     → frames             varint h: h = 0 FIN of that direction; h = 1 RAW; h ≥ 2 data, h − 1 bytes follow
 * Once both directions have sent their FIN the connection is over and the session is idle again.
 * Version 1.1.0 (SESSION_PROTOCOL_EARLY, offered first; 1.0.0 still spoken both ways): a CONNECT may carry the
 * connection's first bytes (ProxyMsg.early, at most EARLY_MAX), which the receiver writes to the endpoint as soon
 * as it is connected. The request then crosses with its CONNECT: one message and one TLS record fewer per
 * connection, and no round trip between SUCCESS and the request. After FAILED they are simply dropped (the
 * dialer still has them for its next endpoint).
 * RAW: after RAW_AFTER bytes in one direction the sender stops framing it (a frame header per chunk costs a TLS
 * record of its own, ~25% of bulk throughput): the rest of that direction is the stream's bytes as they are, its
 * FIN is the stream's own half-close, and the session is not reused (the stream closes with the connection,
 * as a /libp2p/tunnel-proxy/1.0.0 stream does). Short connections, the ones sessions are for, never get there. Anything else
 * (a reset of either socket, bytes where none may come, a malformed length) resets the stream, which resets the
 * connection it carried on both nodes, and the session is gone. Sessions never half-close the stream itself.
 */
import type { Stream } from '@libp2p/interface';
import { Uint8ArrayList } from 'uint8arraylist';
import { concat } from '../net/bytes.ts';
import type { Pipe, PipeHandlers } from '../dial/contract.ts';
import { receiveDirectly } from './patches/direct-receive.ts';
import { HIGH_WATER, LOW_WATER, pauseStream, resumeStream } from './pipe.ts';
import { MsgType, replyType } from './protocol.ts';
import { DecodeError, MAX_MESSAGE, lengthPrefixed, readVarint, writeVarint } from './protocol.ts';

export const SESSION_PROTOCOL = '/edgemesh/tunnel-session/1.0.0';
export const SESSION_PROTOCOL_EARLY = '/edgemesh/tunnel-session/1.1.0';
/** The most first bytes a CONNECT carries; the rest follows as frames once it succeeded. */
export const EARLY_MAX = 16 * 1024;

const FIN = new Uint8Array([0]);
const RAW = new Uint8Array([1]);
/** Bytes sent framed in one direction before switching it to raw. */
export const RAW_AFTER = 256 * 1024;

function header(length: number): Uint8Array {
  const out: number[] = [];
  writeVarint(out, length);
  return Uint8Array.from(out);
}

export interface SessionHooks {
  /** A handshake message: replies on the dialer's side, CONNECTs on the receiver's. */
  message(s: Session, msg: Uint8Array): void;
  /** The connection it carried is over, cleanly: the session can carry the next one. */
  released(s: Session): void;
  /** The stream is gone (closed or reset). */
  gone(s: Session): void;
}

export class Session {
  /** handshake: a message is expected; open: frames of a connection; idle: nothing may arrive. */
  private phase: 'handshake' | 'open' | 'idle';
  dead = false;
  lastUsed = Date.now();
  /** Dialer: the CONNECT sent, waiting for its reply. */
  private waiting: { h: PipeHandlers; resolve(end: FramedEnd | null): void; reject(e: Error): void } | null = null;
  private partial: Uint8Array | null = null; // an incomplete length prefix or handshake message
  private deferred: Uint8Array | null = null; // the next connection's bytes, arrived before this one ended here
  private remaining = 0; // payload bytes of the current data frame still to come
  private conn: FramedEnd | null = null;
  /** The remote switched its direction to raw (for the connection in progress; the session ends with it). */
  rawIn = false;
  /** The stream speaks 1.1.0: CONNECTs may carry first bytes. */
  readonly early: boolean;

  constructor(readonly stream: Stream, private readonly hooks: SessionHooks, phase: 'handshake' | 'idle') {
    this.phase = phase;
    this.early = stream.protocol === SESSION_PROTOCOL_EARLY;
    stream.maxReadBufferLength = 4 * 1024 * 1024;
    const read = (d: Uint8Array | Uint8ArrayList): void => {
      try {
        if (d instanceof Uint8Array) this.input(d);
        else for (const b of d) this.input(b);
      } catch (e) {
        this.kill(e as Error);
      }
    };
    stream.addEventListener('message', (evt) => read(evt.data as Uint8Array | Uint8ArrayList));
    // The same reader, called without an event while nothing is held (direct-receive.ts).
    receiveDirectly(stream, read);
    stream.addEventListener('drain', () => this.conn?.maybeDrain());
    // A raw direction ends with the stream's half-close; otherwise sessions never half-close, and the remote
    // closing its side ends the session (and any connection on it).
    // 'end', not 'remoteCloseWrite': the latter fires while a paused stream still holds unread bytes.
    stream.addEventListener('end', () => {
      if (this.rawIn && this.conn) this.conn.fin();
      else this.close();
    });
    stream.addEventListener('close', (evt) => {
      this.dead = true;
      const c = this.conn;
      this.conn = null;
      c?.gone(evt.error != null);
      this.hooks.gone(this);
    });
  }

  /**
   * A write was refused: also listen for the stream's 'idle' (its write buffer emptied), which can come without a
   * 'drain'. Only while refused: with no listener, libp2p builds no 'idle' event per write (quiet-events.ts).
   */
  watchIdle(): void {
    if (this.idleWatched) return;
    this.idleWatched = true;
    this.stream.addEventListener('idle', this.onIdle);
  }

  private idleWatched = false;
  private readonly onIdle = (): void => {
    this.conn?.maybeDrain();
    if (this.conn?.refusedWrite) return;
    this.idleWatched = false;
    this.stream.removeEventListener('idle', this.onIdle);
  };

  /** Send a handshake message (CONNECT, SUCCESS or FAILED). */
  sendMessage(msg: Uint8Array): void {
    this.stream.send(lengthPrefixed(msg));
  }

  /**
   * Dialer: send a framed CONNECT and wait for its reply: the connection's end (attached, paused) on SUCCESS,
   * null on FAILED (the session is released for the next one); rejected if the stream dies first.
   */
  connect(h: PipeHandlers, framedConnect: Uint8Array): Promise<FramedEnd | null> {
    return new Promise((resolve, reject) => {
      this.waiting = { h, resolve, reject };
      this.phase = 'handshake';
      this.stream.send(framedConnect);
    });
  }

  /** Dialer: the reply to our CONNECT arrived (from the hooks' message()). */
  answered(msg: Uint8Array): void {
    const w = this.waiting;
    this.waiting = null;
    if (!w) throw new DecodeError('a reply nobody asked for');
    if (replyType(msg) === MsgType.SUCCESS) {
      // Attached before the rest of this read is parsed: the endpoint may speak first.
      w.resolve(this.attach(w.h, true));
    } else {
      this.release();
      w.resolve(null);
    }
  }

  /** Dialer: the stream is gone while a CONNECT waits for its reply. */
  failWaiting(err: Error): void {
    this.waiting?.reject(err);
    this.waiting = null;
  }

  /** Receiver: the next message expected is a CONNECT (after a FAILED, or once a connection is released). */
  expectConnect(): void {
    this.phase = 'handshake';
  }

  /** Dialer: back in the pool; nothing may arrive until the next CONNECT. */
  rest(): void {
    this.phase = 'idle';
  }

  /** Start carrying a connection; `paused` holds what arrives until the caller resumes the pipe. */
  attach(h: PipeHandlers, paused: boolean): FramedEnd {
    this.phase = 'open';
    this.remaining = 0;
    this.rawIn = false;
    this.conn = new FramedEnd(this, h, paused);
    return this.conn;
  }

  /** The connection ended cleanly on both sides. */
  release(): void {
    this.conn = null;
    this.lastUsed = Date.now();
    this.hooks.released(this);
    // The held bytes first, then the stream's: a CONNECT with first bytes can span reads, and resume() may
    // deliver the rest of it at once.
    const next = this.deferred;
    this.deferred = null;
    if (next && !this.dead) {
      try {
        this.input(next);
      } catch (e) {
        this.kill(e as Error);
      }
    }
    if (!this.dead) resumeStream(this.stream);
  }

  /** Reset the stream: the connection on it, if any, is reset on both nodes. */
  kill(err: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.stream.abort(err);
  }

  /** Close an idle session gracefully. */
  close(): void {
    if (this.dead) return;
    this.dead = true;
    this.stream.close().catch(() => this.stream.abort(new Error('closing the session')));
  }

  private input(chunk: Uint8Array): void {
    let data = chunk;
    if (this.partial) {
      data = concat(this.partial, chunk);
      this.partial = null;
    }
    let i = 0;
    while (i < data.length) {
      if (this.dead) return;
      if (this.phase === 'open' && (this.remaining > 0 || this.rawIn)) {
        if (this.rawIn) {
          this.conn!.deliver(i === 0 ? data : data.subarray(i));
          return;
        }
        // Payload is passed on as it arrives: only length prefixes ever wait for more bytes.
        const n = Math.min(this.remaining, data.length - i);
        this.remaining -= n;
        this.conn!.deliver(data.subarray(i, i + n));
        i += n;
        continue;
      }
      if (this.phase === 'idle') throw new DecodeError('bytes on an idle session');
      if (this.phase === 'open' && this.conn?.remoteDone) {
        // The remote finished this connection and already sent the next CONNECT, while our side still writes
        // what it holds: keep the bytes until the connection is released.
        this.deferred = concat(this.deferred, data.subarray(i));
        pauseStream(this.stream);
        return;
      }
      const v = readVarint(data, i);
      if (!v) {
        if (data.length - i > 10) throw new DecodeError('bad length prefix');
        this.partial = data.slice(i);
        return;
      }
      if (this.phase === 'handshake') {
        if (v.value > MAX_MESSAGE + EARLY_MAX) throw new DecodeError(`handshake message of ${v.value} bytes`);
        if (data.length - v.next < v.value) {
          this.partial = data.slice(i);
          return;
        }
        i = v.next + v.value;
        this.phase = 'idle'; // until the hook decides: the peer sends nothing before our answer
        this.hooks.message(this, data.subarray(v.next, i));
        continue;
      }
      // open: a frame header
      i = v.next;
      if (v.value === 0) this.conn!.fin();
      else if (v.value === 1) this.rawIn = true;
      else this.remaining = v.value - 1;
    }
  }
}

/** One proxied connection on a session, shaped like a socket for the splices (pipe.ts). */
export class FramedEnd implements Pipe {
  /** Dialer: how many of the caller's first bytes went with the CONNECT (the caller sends only the rest). */
  sentEarly = 0;
  private sentFin = false;
  private gotFin = false;
  private framedBytes = 0;
  /** The stream closed cleanly while this end was paused: finish once resumed. */
  private closing = false;
  private rawOut = false;
  private done = false;
  private refused = false;
  /** What arrived while paused, in order; null is the FIN. */
  private held: (Uint8Array | null)[] = [];

  constructor(private readonly s: Session, private readonly h: PipeHandlers, private paused: boolean) {
    if (paused) pauseStream(s.stream);
  }

  finished(): boolean {
    return this.sentFin && this.gotFin;
  }

  /** The remote's direction has ended (its FIN arrived). */
  get remoteDone(): boolean {
    return this.gotFin;
  }

  deliver(d: Uint8Array): void {
    if (this.gotFin) throw new DecodeError('data after FIN');
    if (this.paused || this.held.length) this.held.push(d);
    else this.h.data(d);
  }

  fin(): void {
    if (this.gotFin) throw new DecodeError('a second FIN');
    this.gotFin = true;
    if (this.paused || this.held.length) this.held.push(null);
    else this.h.end();
  }

  /** A write was refused and its drain not reported yet. */
  get refusedWrite(): boolean {
    return this.refused;
  }

  maybeDrain(): void {
    if (this.refused && this.s.stream.writeBufferLength <= LOW_WATER) {
      this.refused = false;
      this.h.drain();
    }
  }

  /**
   * The stream is gone. Reset: the connection is reset. Clean (the remote closed it after its last bytes): what
   * is held for a paused reader is delivered first, then the end, as a socket's FIN would be.
   */
  gone(reset: boolean): void {
    if (this.done) return;
    if (!reset && (this.held.length || this.paused)) {
      this.closing = true; // resume() finishes
      return;
    }
    this.done = true;
    if (!reset && !this.gotFin) this.h.end();
    this.h.close(reset);
  }

  write(chunk: Uint8Array): number {
    if (this.done || this.sentFin || this.s.dead) return chunk.length; // nowhere to go; close follows
    if (this.s.stream.writeBufferLength > HIGH_WATER) {
      this.refused = true;
      this.s.watchIdle();
      return 0;
    }
    if (!chunk.length) return 0;
    if (this.rawOut) {
      this.s.stream.send(chunk);
    } else if (this.framedBytes + chunk.length > RAW_AFTER) {
      this.rawOut = true;
      this.s.stream.send(new Uint8ArrayList(RAW, chunk));
    } else {
      this.framedBytes += chunk.length;
      this.s.stream.send(new Uint8ArrayList(header(chunk.length + 1), chunk));
    }
    return chunk.length;
  }

  shutdown(): void {
    if (this.sentFin || this.done || this.s.dead) return;
    this.sentFin = true;
    if (this.rawOut) this.s.stream.close().catch(() => {}); // half-close: the remote keeps sending
    else this.s.stream.send(FIN);
  }

  /** A raw direction was used: the stream cannot carry another connection. */
  private get spent(): boolean {
    return this.rawOut || this.s.rawIn;
  }

  /**
   * Both directions are done, or our side is gone without a reset (a socket can close without reporting its FIN
   * first). As a stream would: FIN if not sent yet; if the remote has finished too the session is free for the
   * next connection, and if it is still sending, the stream is reset (as StreamPipe resets a stream closed while
   * the remote still sends).
   */
  end(): void {
    if (this.done) return;
    this.done = true;
    this.held = [];
    if (!this.gotFin) {
      this.s.kill(new Error('the tunnelled connection closed while the remote was still sending'));
      return;
    }
    if (this.spent) {
      // Our side FINs by closing the stream (no-op if it did already); once both are closed the stream is gone.
      this.sentFin = true;
      this.s.close();
      return;
    }
    if (!this.sentFin && !this.s.dead) {
      this.sentFin = true;
      this.s.stream.send(FIN);
    }
    this.s.release();
  }

  terminate(): void {
    if (this.done) return;
    this.done = true;
    this.s.kill(new Error('the other side of the tunnelled connection was reset'));
  }

  pause(): void {
    this.paused = true;
    pauseStream(this.s.stream);
  }

  resume(): void {
    this.paused = false;
    resumeStream(this.s.stream);
    while (!this.paused && this.held.length && !this.done) {
      const d = this.held.shift()!;
      if (d === null) this.h.end();
      else this.h.data(d);
    }
    if (this.closing && !this.paused && !this.held.length) {
      this.closing = false;
      this.gone(false);
    }
  }
}
