/**
 * gateway/ — HTTP/1.1 message framing for the gateway, both directions (RFC 9112), strict where a lax reading is
 * how requests get smuggled past a proxy.
 *
 * Requests from the internet: the request line is `METHOD SP target SP HTTP/1.x`, header names are tokens, no
 * whitespace before the colon, no obsolete line folding, no bare CR; both Content-Length and Transfer-Encoding is
 * refused, as is a Transfer-Encoding other than a final `chunked` and differing Content-Lengths. Limits: the head
 * (request line and headers) at most 64 KiB and 100 header lines.
 *
 * Responses from backends: the same head rules, and the body framing of RFC 9112 §6.3.
 *
 * Chunked bodies pass through unchanged (ChunkScanner only finds where they end), so the proxy never re-encodes.
 */

export const MAX_HEAD_BYTES = 64 * 1024;
export const MAX_HEADERS = 100;

export type Framing = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

export interface RequestHead {
  method: string;
  target: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: 0 | 1;
  /** Lower-case names, values trimmed, in order. */
  headers: [string, string][];
  framing: Framing;
  /** The client wants the connection kept after this exchange. */
  keepAlive: boolean;
  /** The Upgrade token asked for (with Connection: upgrade), lower case; "" when none. */
  upgrade: string;
}

export interface ResponseHead {
  status: number;
  reason: string;
  minor: 0 | 1;
  headers: [string, string][];
  keepAlive: boolean;
}

export class HttpError extends Error {
  constructor(readonly status: 400 | 413 | 431 | 501 | 505, message: string) {
    super(message);
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[\0\r\n]/;

/** Offset just past the blank line that ends a head starting at 0, or -1. */
export function findHeadEnd(b: Uint8Array, from = 0): number {
  for (let i = Math.max(3, from); i < b.length; i++) {
    if (b[i] === 10 && b[i - 1] === 13 && b[i - 2] === 10 && b[i - 3] === 13) return i + 1;
  }
  return -1;
}

function latin1(b: Uint8Array, start: number, end: number): string {
  return Buffer.from(b.buffer, b.byteOffset + start, end - start).toString('latin1');
}

function parseHeaderLines(lines: string[], from: number): [string, string][] {
  if (lines.length - from > MAX_HEADERS) throw new HttpError(431, `more than ${MAX_HEADERS} header lines`);
  const out: [string, string][] = [];
  for (let i = from; i < lines.length; i++) {
    const l = lines[i]!;
    if (l === '') continue;
    if (l[0] === ' ' || l[0] === '\t') throw new HttpError(400, 'obsolete line folding');
    const c = l.indexOf(':');
    if (c <= 0) throw new HttpError(400, 'a header line without a name');
    const name = l.slice(0, c);
    if (!TOKEN.test(name)) throw new HttpError(400, `bad header name ${JSON.stringify(name.slice(0, 40))}`);
    const value = l.slice(c + 1).trim();
    if (BAD_VALUE.test(value)) throw new HttpError(400, 'a control character in a header value');
    out.push([name.toLowerCase(), value]);
  }
  return out;
}

const connectionTokens = (headers: [string, string][]): Set<string> => {
  const s = new Set<string>();
  for (const [k, v] of headers) if (k === 'connection') for (const t of v.split(',')) s.add(t.trim().toLowerCase());
  return s;
};

function bodyFraming(headers: [string, string][], forResponse: boolean): Framing {
  let te: string | null = null;
  let cl: string | null = null;
  for (const [k, v] of headers) {
    if (k === 'transfer-encoding') te = te === null ? v : `${te}, ${v}`;
    else if (k === 'content-length') {
      if (cl !== null && cl !== v) throw new HttpError(400, 'differing Content-Length headers');
      cl = v;
    }
  }
  if (te !== null) {
    if (cl !== null && !forResponse) throw new HttpError(400, 'both Content-Length and Transfer-Encoding');
    const codings = te.toLowerCase().split(',').map((x) => x.trim()).filter(Boolean);
    if (codings[codings.length - 1] === 'chunked') {
      if (!forResponse && codings.length > 1) throw new HttpError(501, `Transfer-Encoding ${te} is not supported`);
      return { kind: 'chunked' };
    }
    if (!forResponse) throw new HttpError(400, `Transfer-Encoding ${te} without chunked last`);
    return { kind: 'close' };
  }
  if (cl !== null) {
    // A list of equal values ("5, 5") is one length, as RFC 9110 §8.6 allows.
    const parts = cl.split(',').map((x) => x.trim());
    if (!parts.every((p) => /^\d{1,15}$/.test(p) && p === parts[0])) throw new HttpError(400, `bad Content-Length ${JSON.stringify(cl.slice(0, 40))}`);
    return { kind: 'length', length: Number(parts[0]) };
  }
  return forResponse ? { kind: 'close' } : { kind: 'none' };
}

/** The request head in b[0, end) (end from findHeadEnd). Throws HttpError. */
export function parseRequestHead(b: Uint8Array, end: number): RequestHead {
  const text = latin1(b, 0, end - 4);
  if (text.includes('\r') && /\r(?!\n)/.test(text)) throw new HttpError(400, 'a bare CR');
  const lines = text.split('\r\n');
  const rl = lines[0]!;
  const sp1 = rl.indexOf(' ');
  const sp2 = rl.lastIndexOf(' ');
  if (sp1 <= 0 || sp2 <= sp1) throw new HttpError(400, 'a malformed request line');
  const method = rl.slice(0, sp1);
  const target = rl.slice(sp1 + 1, sp2);
  const version = rl.slice(sp2 + 1);
  if (!TOKEN.test(method)) throw new HttpError(400, 'a malformed method');
  if (version !== 'HTTP/1.1' && version !== 'HTTP/1.0') throw new HttpError(version.startsWith('HTTP/') ? 505 : 400, `version ${JSON.stringify(version.slice(0, 20))} is not HTTP/1.x`);
  if (!target || /[\s\0]/.test(target)) throw new HttpError(400, 'a malformed request target');
  const headers = parseHeaderLines(lines, 1);
  const minor = version === 'HTTP/1.1' ? 1 : 0;
  const conn = connectionTokens(headers);
  const keepAlive = minor === 1 ? !conn.has('close') : conn.has('keep-alive');
  let upgrade = '';
  if (conn.has('upgrade')) upgrade = (headers.find(([k]) => k === 'upgrade')?.[1] ?? '').toLowerCase();
  return { method, target, minor, headers, framing: bodyFraming(headers, false), keepAlive, upgrade };
}

/** A response head in b[0, end). Returns null when malformed (the caller answers 502). */
export function parseResponseHead(b: Uint8Array, end: number): ResponseHead | null {
  try {
    const lines = latin1(b, 0, end - 4).split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (!m) return null;
    const headers = parseHeaderLines(lines, 1);
    const minor = m[1] === '1' ? 1 : 0;
    const conn = connectionTokens(headers);
    return { status: Number(m[2]), reason: m[3] ?? '', minor, headers, keepAlive: minor === 1 ? !conn.has('close') : conn.has('keep-alive') };
  } catch {
    return null;
  }
}

/** How a response's body is framed (RFC 9112 §6.3), given the request method. Throws on a bad Content-Length. */
export function responseFraming(h: ResponseHead, method: string): Framing {
  if (method === 'HEAD' || h.status === 204 || h.status === 304 || (h.status >= 100 && h.status < 200)) return { kind: 'none' };
  return bodyFraming(h.headers, true);
}

/**
 * Finds the end of a chunked body in a byte stream without changing it: feed() returns how many of the bytes
 * belong to the body (all of them until the last chunk and its trailers have passed), or throws on bad framing.
 */
export class ChunkScanner {
  /** Bytes of chunk data still to pass; then its CRLF (2), then a size line. */
  private left = 0;
  private state: 'size' | 'data' | 'crlf' | 'trailer' | 'done' = 'size';
  private line = '';

  get done(): boolean {
    return this.state === 'done';
  }

  feed(b: Uint8Array, from = 0): number {
    let i = from;
    while (i < b.length && this.state !== 'done') {
      if (this.state === 'data') {
        const take = Math.min(this.left, b.length - i);
        i += take;
        this.left -= take;
        if (this.left === 0) {
          this.state = 'crlf';
          this.left = 2;
        }
        continue;
      }
      if (this.state === 'crlf') {
        const want = this.left === 2 ? 13 : 10;
        if (b[i] !== want) throw new HttpError(400, 'bad chunk framing');
        i++;
        if (--this.left === 0) this.state = 'size';
        continue;
      }
      // A line: a size line, or a trailer line (the empty one ends the body).
      const c = b[i++]!;
      if (c !== 10) {
        if (this.line.length > 4096) throw new HttpError(400, 'a chunk size or trailer line over 4 KiB');
        this.line += String.fromCharCode(c);
        continue;
      }
      const line = this.line.endsWith('\r') ? this.line.slice(0, -1) : this.line;
      this.line = '';
      if (this.state === 'trailer') {
        if (line === '') this.state = 'done';
        continue;
      }
      const m = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
      if (!m) throw new HttpError(400, `bad chunk size line ${JSON.stringify(line.slice(0, 40))}`);
      const size = parseInt(m[1]!, 16);
      if (size === 0) this.state = 'trailer';
      else {
        this.state = 'data';
        this.left = size;
      }
    }
    return i - from;
  }
}
