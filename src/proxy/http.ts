/**
 * proxy/ — the HTTP-aware stage of the TCP path, used only when a hashing policy needs a request head: find the
 * end of the first request head, read one header, cookie or query parameter from it (the hash key), and announce
 * a generated cookie with a Set-Cookie line inserted into the first response head. Bytes are never rewritten
 * otherwise: the proxy keeps the raw request and replays it, so keep-alive, pipelining and bodies are untouched.
 *
 *   const d = decideFromHead(earlyBytes, policy.hash);   // { hashKey, cookie }
 *   // response bytes: d.cookie.take(chunk) until it returns bytes to forward; d.cookie.flush() at the end
 */
import { randomBytes } from 'node:crypto';
import type { HashSource } from '../lb/policy.ts';
import { concat } from '../net/bytes.ts';

/** Longest request head we wait for; beyond it the connection is balanced without a key. */
export const MAX_HEAD = 16 * 1024;
const CRLFCRLF = [13, 10, 13, 10];

/** Offset just past the blank line ending a head in `b`, or -1. */
export function headEnd(b: Uint8Array): number {
  outer: for (let i = 0; i + 3 < b.length; i++) {
    for (let k = 0; k < 4; k++) if (b[i + k] !== CRLFCRLF[k]) continue outer;
    return i + 4;
  }
  return -1;
}

const REQUEST_LINE = /^[A-Z]{3,10} (\S+) HTTP\/1\.[01]\r\n/;

/** Whether the first bytes can be the start of an HTTP/1.x request (so waiting for a head is worth it). */
export function looksLikeHttp(b: Uint8Array): boolean {
  const n = Math.min(b.length, 8);
  for (let i = 0; i < n; i++) {
    const c = b[i]!;
    if (c === 32) return i >= 3;
    if (c < 65 || c > 90) return false;
  }
  return true;
}

/**
 * The first `end` bytes as a string, one character per byte. Straight from the socket's Uint8Array: a Buffer
 * over it would first have to give the array an ArrayBuffer of its own (JSC's "get buffer"), measurable per
 * new connection.
 */
export function latin1(b: Uint8Array, end: number): string {
  const CHUNK = 4096; // apply() passes every byte as an argument: keep each call well under engine limits
  if (end <= CHUNK) return String.fromCharCode.apply(null, (end === b.length ? b : b.subarray(0, end)) as unknown as number[]);
  let s = '';
  for (let i = 0; i < end; i += CHUNK) s += String.fromCharCode.apply(null, b.subarray(i, Math.min(end, i + CHUNK)) as unknown as number[]);
  return s;
}

/**
 * The values of header `name` (lower case) in a head, in order; names match case-insensitively and may be
 * followed by blanks before the colon, values are trimmed. One lower-cased copy of the head is searched rather
 * than splitting it into lines.
 */
function headerValues(head: string, from: number, name: string): string[] {
  const lower = head.toLowerCase();
  const needle = '\r\n' + name;
  const values: string[] = [];
  for (let i = lower.indexOf(needle, from); i >= 0; i = lower.indexOf(needle, i + 2)) {
    let j = i + needle.length;
    while (head.charCodeAt(j) === 32 || head.charCodeAt(j) === 9) j++;
    if (head.charCodeAt(j) !== 58) continue; // a longer name that starts with this one (x-user-id for x-user)
    let eol = head.indexOf('\r\n', j + 1);
    if (eol < 0) eol = head.length;
    values.push(head.slice(j + 1, eol).trim());
  }
  return values;
}

/** The hash key of a complete request head, or undefined when the request does not carry it. */
export function requestKey(head: string, source: HashSource): string | undefined {
  const line = REQUEST_LINE.exec(head);
  if (!line) return undefined;
  if (source.kind === 'query') {
    const target = line[1]!;
    const q = target.indexOf('?');
    if (q < 0) return undefined;
    return new URLSearchParams(target.slice(q + 1)).get(source.name) ?? undefined;
  }
  if (source.kind === 'source-ip') return undefined;
  // From the CRLF that ends the request line: every header line starts after a CRLF.
  const values = headerValues(head, line[0].length - 2, source.kind === 'header' ? source.name.toLowerCase() : 'cookie');
  if (source.kind === 'header') return values.length ? values.join(',') : undefined;
  for (const v of values) {
    for (const pair of v.split(';')) {
      const eq = pair.indexOf('=');
      if (eq > 0 && pair.slice(0, eq).trim() === source.name) return pair.slice(eq + 1).trim();
    }
  }
  return undefined;
}

/** A Set-Cookie line for a generated key (Envoy does the same for istio's httpCookie with a ttl). */
export function setCookieLine(source: Extract<HashSource, { kind: 'cookie' }>, value: string): string {
  return `Set-Cookie: ${source.name}=${value}; Path=${source.path}${source.ttlSeconds > 0 ? `; Max-Age=${Math.floor(source.ttlSeconds)}` : ''}; HttpOnly\r\n`;
}

/** Insert `line` (ending in CRLF) just before the blank line of the head that ends at `end`. */
export function insertIntoHead(b: Uint8Array, end: number, line: string): Uint8Array {
  const add = new TextEncoder().encode(line);
  const out = new Uint8Array(b.length + add.length);
  out.set(b.subarray(0, end - 2));
  out.set(add, end - 2);
  out.set(b.subarray(end - 2), end - 2 + add.length);
  return out;
}

/** What the first request head decides: the hash key, and a generated cookie to announce in the response. */
export interface HeadDecision {
  hashKey: string | undefined;
  cookie: CookieAnnouncer | null;
}

/**
 * The hash key from the request head at the start of `early` (none when the head is incomplete or lacks it). A
 * cookie policy whose cookie is absent gets a generated key, announced to the client with Set-Cookie.
 */
export function decideFromHead(early: Uint8Array | null, source: HashSource): HeadDecision {
  const end = early ? headEnd(early) : -1;
  if (end < 0) return { hashKey: undefined, cookie: null };
  const hashKey = requestKey(latin1(early!, end), source);
  if (hashKey === undefined && source.kind === 'cookie') {
    const generated = randomBytes(16).toString('hex');
    return { hashKey: generated, cookie: new CookieAnnouncer(setCookieLine(source, generated)) };
  }
  return { hashKey, cookie: null };
}

/** Holds the first response until its head is complete (or 64 KiB came without one), then inserts the Set-Cookie line. */
export class CookieAnnouncer {
  private held: Uint8Array | null = null;

  constructor(private readonly line: string) {}

  /** Response bytes in; the bytes to forward out, or null while the head is still incomplete. */
  take(chunk: Uint8Array): Uint8Array | null {
    const b = concat(this.held, chunk);
    const end = headEnd(b);
    if (end < 0 && b.length < 64 * 1024) {
      this.held = b;
      return null;
    }
    this.held = null;
    return end >= 0 ? insertIntoHead(b, end, this.line) : b;
  }

  /** The response ended before its head did: what was held, as it is. */
  flush(): Uint8Array | null {
    const b = this.held;
    this.held = null;
    return b;
  }
}
