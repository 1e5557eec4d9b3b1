/**
 * tunnel/ — the wire messages of the original's two protocols (discovery and proxy, docs/tunnel.md), byte-compatible with its Go
 * protobuf (proto2, varint-length-delimited on the stream):
 *
 *   Discovery { type=1 enum CONNECT|SUCCESS|FAILED; protocol=2 string ("MDNS"|"DHT"); node_name=3 string }
 *   Proxy     { type=1 enum; protocol=2 string ("tcp"|"udp"); node_name=3 string; ip=4 string; port=5 int32 }
 *             + ours, only on session streams of /edgemesh/tunnel-session/1.1.0: early=16 bytes (the connection's
 *               first bytes, carried by its CONNECT; session.ts)
 *
 * Hand-written: five scalar fields do not justify a code generator, and decoding must never throw past the
 * stream that sent the bytes (a bad message costs that stream only). Unknown fields are skipped as protobuf
 * requires. UDP payloads after a Proxy SUCCESS are framed here too (our fix: the original loses datagram
 * boundaries), as a 2-byte big-endian length before each datagram.
 */

import type { Stream } from '@libp2p/interface';
import { concat } from '../net/bytes.ts';

export const DISCOVERY_PROTOCOL = '/libp2p/tunnel-discovery/1.0.0';
export const PROXY_PROTOCOL = '/libp2p/tunnel-proxy/1.0.0';
/** The original's reader limit for one message. */
export const MAX_MESSAGE = 4096;

export enum MsgType {
  CONNECT = 0,
  SUCCESS = 1,
  FAILED = 2,
}

export interface DiscoveryMsg {
  type: MsgType;
  protocol: string;
  nodeName: string;
}

export interface ProxyMsg {
  type: MsgType;
  protocol: string;
  nodeName: string;
  ip: string;
  port: number;
  /** A CONNECT's first bytes for the endpoint (session protocol 1.1 only); absent = none. */
  early?: Uint8Array;
}

/** Field number of `early`: far from the original's 1-5. */
const EARLY_FIELD = 16;

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

/** Append a protobuf varint (also the length prefix of every message on the stream). */
export function writeVarint(out: number[], v: number): void {
  // int32 negatives are encoded as 10-byte two's complement in protobuf; ports and enums are never negative.
  let n = v >>> 0;
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
}

function field(out: number[], no: number, value: number | string | undefined): void {
  if (value === undefined) return;
  if (typeof value === 'number') {
    writeVarint(out, (no << 3) | 0);
    writeVarint(out, value);
  } else {
    const b = te.encode(value);
    writeVarint(out, (no << 3) | 2);
    writeVarint(out, b.length);
    for (const x of b) out.push(x);
  }
}

export class DecodeError extends Error {
  override name = 'DecodeError';
}

/**
 * The varint at buf[i]: its value (bits past 32 ignored, as no field here is wider) and where the next byte is;
 * null when the buffer ends inside it; DecodeError when it runs past 10 bytes.
 */
export function readVarint(buf: Uint8Array, i: number): { value: number; next: number } | null {
  let value = 0;
  let shift = 0;
  for (;;) {
    if (i >= buf.length) return null;
    const b = buf[i++]!;
    if (shift < 32) value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return { value, next: i };
    shift += 7;
    if (shift > 63) throw new DecodeError('varint too long');
  }
}

/**
 * A string field. Names, addresses and "tcp" are short ASCII: read byte by byte, which is several times cheaper
 * than a TextDecoder call for a dozen bytes (one CONNECT per proxied connection has three of them).
 */
function text(bytes: Uint8Array, no: number): string {
  if (bytes.length <= 64) {
    let out = '';
    let i = 0;
    for (; i < bytes.length; i++) {
      const c = bytes[i]!;
      if (c >= 0x80) break;
      out += String.fromCharCode(c);
    }
    if (i === bytes.length) return out;
  }
  try {
    return td.decode(bytes);
  } catch {
    throw new DecodeError(`field ${no} is not UTF-8`);
  }
}

/** Decode fields 1..5 of either message; throws DecodeError on malformed input. */
function decodeFields(buf: Uint8Array): Map<number, number | string | Uint8Array> {
  const fields = new Map<number, number | string | Uint8Array>();
  let i = 0;
  const next = (): number => {
    const v = readVarint(buf, i);
    if (!v) throw new DecodeError('truncated varint');
    i = v.next;
    return v.value;
  };
  while (i < buf.length) {
    const tag = next();
    const no = Math.floor(tag / 8);
    const wt = tag & 7;
    if (no === 0) throw new DecodeError('field number 0');
    if (wt === 0) {
      const v = next();
      fields.set(no, v > 0x7fffffff ? v - 2 ** 32 : v);
    } else if (wt === 2) {
      const len = next();
      if (i + len > buf.length) throw new DecodeError('truncated field');
      const bytes = buf.subarray(i, i + len);
      i += len;
      if (no === EARLY_FIELD) {
        fields.set(no, bytes);
      } else if (no >= 2 && no <= 4) {
        fields.set(no, text(bytes, no));
      }
    } else if (wt === 1) {
      i += 8;
    } else if (wt === 5) {
      i += 4;
    } else {
      throw new DecodeError(`unsupported wire type ${wt}`);
    }
    if (i > buf.length) throw new DecodeError('truncated field');
  }
  return fields;
}

function msgType(v: number | string | Uint8Array | undefined): MsgType {
  if (v === undefined) return MsgType.CONNECT; // proto2 default
  if (v === 0 || v === 1 || v === 2) return v;
  throw new DecodeError(`unknown message type ${String(v)}`);
}

const str = (v: number | string | Uint8Array | undefined): string => (typeof v === 'string' ? v : '');

export function encodeDiscovery(m: DiscoveryMsg): Uint8Array {
  const out: number[] = [];
  field(out, 1, m.type);
  field(out, 2, m.protocol);
  field(out, 3, m.nodeName);
  return Uint8Array.from(out);
}

export function decodeDiscovery(buf: Uint8Array): DiscoveryMsg {
  const f = decodeFields(buf);
  return { type: msgType(f.get(1)), protocol: str(f.get(2)), nodeName: str(f.get(3)) };
}

export function encodeProxy(m: Partial<ProxyMsg> & { type: MsgType }): Uint8Array {
  const out: number[] = [];
  field(out, 1, m.type);
  field(out, 2, m.protocol);
  field(out, 3, m.nodeName);
  field(out, 4, m.ip);
  field(out, 5, m.port);
  return withEarly(out, m.early, false);
}

/**
 * `fields` (encoded fields 1-5) followed by `early` as field 16 when there are first bytes, in one buffer, with
 * the stream's varint length prefix in front when `prefixed`.
 */
function withEarly(fields: ArrayLike<number>, early: Uint8Array | undefined, prefixed: boolean): Uint8Array {
  const tail: number[] = [];
  if (early?.length) {
    writeVarint(tail, (EARLY_FIELD << 3) | 2);
    writeVarint(tail, early.length);
  }
  const len = fields.length + tail.length + (early?.length ?? 0);
  const head: number[] = [];
  if (prefixed) writeVarint(head, len);
  const b = new Uint8Array(head.length + len);
  b.set(head);
  b.set(fields, head.length);
  if (early?.length) {
    b.set(tail, head.length + fields.length);
    b.set(early, head.length + fields.length + tail.length);
  }
  return b;
}

export function decodeProxy(buf: Uint8Array): ProxyMsg {
  const f = decodeFields(buf);
  const port = f.get(5);
  const early = f.get(EARLY_FIELD);
  const m: ProxyMsg = { type: msgType(f.get(1)), protocol: str(f.get(2)), nodeName: str(f.get(3)), ip: str(f.get(4)), port: typeof port === 'number' ? port : 0 };
  if (early instanceof Uint8Array && early.length) m.early = early;
  return m;
}

/**
 * The type of a reply (SUCCESS or FAILED), read without decoding the rest: a session's replies carry nothing else,
 * and a dialer needs nothing else from the original's (which echo the request's strings). Anything but a lone
 * type field is decoded in full, so malformed input still throws DecodeError.
 */
export function replyType(buf: Uint8Array): MsgType {
  if (buf.length === 2 && buf[0] === 0x08 && buf[1]! < 0x80) return msgType(buf[1]);
  return decodeProxy(buf).type;
}

/** The most a UDP datagram can carry; also the frame limit on the stream. */
export const MAX_DATAGRAM = 65535;

/**
 * Bytes a UDP flow's stream may hold unsent before datagrams are dropped (UDP may drop; a peer that stops
 * reading must not grow our memory without bound).
 */
export const UDP_STREAM_LIMIT = 1024 * 1024;

/** Prefix one datagram with its length for the stream. */
export function frameDatagram(d: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + d.length);
  out[0] = d.length >>> 8;
  out[1] = d.length & 0xff;
  out.set(d, 2);
  return out;
}

/** Reassembles datagrams from stream chunks cut anywhere (2-byte length prefixes: net/frames.ts, linear in the bytes). */
export { Frames16 as DatagramDeframer } from '../net/frames.ts';

/**
 * A session's CONNECT, length prefix included, built in one buffer: `fields` is encodeProxy() of the CONNECT
 * without first bytes (the same for every connection to one endpoint, so the caller can keep it), and `early`
 * the first bytes, if any, as field 16.
 */
export function framedConnect(fields: Uint8Array, early?: Uint8Array): Uint8Array {
  return withEarly(fields, early, true);
}

/** One varint-length-prefixed message, for writing straight to a stream. */
export function lengthPrefixed(msg: Uint8Array): Uint8Array {
  const head: number[] = [];
  writeVarint(head, msg.length);
  const b = new Uint8Array(head.length + msg.length);
  b.set(head);
  b.set(msg, head.length);
  return b;
}

/** The smallest surface of a libp2p stream the reader needs (kept structural so tests can pass fakes). */
export interface MessageSource {
  addEventListener(type: 'message', fn: (evt: { data: Uint8Array | Iterable<Uint8Array> }) => void): void;
  addEventListener(type: 'close', fn: () => void): void;
  removeEventListener(type: 'message' | 'close', fn: (...a: never[]) => void): void;
  unshift(data: Uint8Array): void;
}

/**
 * Read exactly one varint-length-prefixed message from a stream, straight from its 'message' events: the
 * handshake of every proxied connection does this once, and libp2p's lpStream (byte-stream wrapper, async
 * iterator, list buffers) costs more than the rest of the exchange. Bytes after the message are put back.
 */
export function readMessage(stream: MessageSource, max: number, signal: AbortSignal): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    let buf: Uint8Array | null = null;
    const done = (err: Error | null, msg?: Uint8Array, rest?: Uint8Array): void => {
      stream.removeEventListener('message', onMessage as never);
      stream.removeEventListener('close', onClose as never);
      signal.removeEventListener('abort', onAbort);
      if (err) return reject(err);
      if (rest && rest.length) stream.unshift(rest);
      resolve(msg!);
    };
    const onMessage = (evt: { data: Uint8Array | Iterable<Uint8Array> }): void => {
      for (const chunk of evt.data instanceof Uint8Array ? [evt.data] : evt.data) buf = concat(buf, chunk);
      let prefix;
      try {
        prefix = readVarint(buf!, 0);
      } catch (e) {
        return done(e as Error);
      }
      if (!prefix) return; // the length prefix is not complete yet
      const { value: len, next: i } = prefix;
      if (i > 5) return done(new DecodeError('message length prefix too long'));
      if (len > max) return done(new DecodeError(`message of ${len} bytes exceeds ${max}`));
      if (buf!.length - i < len) return;
      done(null, buf!.subarray(i, i + len), buf!.subarray(i + len));
    };
    const onClose = (): void => done(new Error('the stream closed before a whole message arrived'));
    const onAbort = (): void => done(signal.reason instanceof Error ? signal.reason : new Error('timed out waiting for a message'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    stream.addEventListener('message', onMessage as never);
    stream.addEventListener('close', onClose as never);
  });
}

/** One length-prefixed protocol message (discovery or proxy) from a libp2p stream. */
export function readOne(s: Stream, signal: AbortSignal): Promise<Uint8Array> {
  return readMessage(s as unknown as MessageSource, MAX_MESSAGE, signal);
}
