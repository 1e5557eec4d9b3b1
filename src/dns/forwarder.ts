/**
 * Forwarding for names that are not ours: upstreams from resolv.conf (minus our own address, so a resolv.conf
 * that points back at the agent cannot loop — the original's CoreDNS exits on that) or from config.
 *
 * - UDP from a new socket per query, so from a random source port (as BIND and Unbound do: an off-path spoofer
 *   must guess the port as well as the 16-bit ID), with a random transaction ID from the CSPRNG; the socket is
 *   connected to the upstream, so the kernel delivers only its datagrams, and an answer must carry our ID and
 *   our question. A timeout per try, failover across upstreams; a truncated answer is retried over TCP to the
 *   same upstream.
 * - A bounded cache keyed by (name, type, class, DO bit), evicting oldest first. Entries keep the upstream's bytes; a hit copies
 *   them, patches the ID and the client's question (its letter case), and ages every TTL in place.
 *   Negative answers are cached for at most maxNegativeTTL; SERVFAIL and REFUSED are not cached.
 * - Identical questions in flight share one upstream query.
 */
import { isIP } from 'node:net';
import { describeError } from '../errors.ts';
import { Frames16 } from '../net/frames.ts';
import type { Logger } from '../obs/logger.ts';
import { RCODE, RD, errorResponse, questionEnd, readU16, ttlOffsets, writeU16 } from './wire.ts';

export interface Upstream {
  host: string;
  port: number;
}

/** Count the TTLs of a copy of a cached answer down by the whole seconds it has been cached. */
function ageTTLs(out: Uint8Array, e: CacheEntry, now: number): void {
  const aged = Math.floor((now - e.storedAt) / 1000);
  if (aged <= 0) return;
  for (const o of e.offsets) {
    const ttl = ((out[o]! << 24) | (out[o + 1]! << 16) | (out[o + 2]! << 8) | out[o + 3]!) >>> 0;
    const t = Math.max(0, ttl - aged);
    out[o] = t >>> 24;
    out[o + 1] = (t >>> 16) & 0xff;
    out[o + 2] = (t >>> 8) & 0xff;
    out[o + 3] = t & 0xff;
  }
}

export function formatUpstream(u: Upstream): string {
  return isIP(u.host) === 6 ? `[${u.host}]:${u.port}` : `${u.host}:${u.port}`;
}

/** `IP` or `IP:PORT` or `[v6]:PORT` → Upstream (config was validated already). */
export function parseUpstream(s: string): Upstream {
  if (isIP(s)) return { host: s, port: 53 };
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(s)!;
  return { host: m[1]!, port: Number(m[2]) };
}

/** nameserver and search lines of a resolv.conf. */
export function parseResolvConf(text: string): { nameservers: string[]; search: string[] } {
  const nameservers: string[] = [];
  let search: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const [key, ...rest] = line.split(/\s+/);
    if (key === 'nameserver' && rest[0] && isIP(rest[0].replace(/%.*$/, ''))) nameservers.push(rest[0].replace(/%.*$/, ''));
    if ((key === 'search' || key === 'domain') && rest.length) search = rest;
  }
  return { nameservers, search };
}

export interface CacheEntry {
  bytes: Uint8Array;
  qEnd: number;
  offsets: number[];
  storedAt: number;
  expiresAt: number;
}

interface Pending {
  resolve: (b: Uint8Array | null) => void;
}

/** A transaction ID from the CSPRNG (Math.random's output can be predicted from a few samples). */
const idBuf = new Uint16Array(1);
function randomId(): number {
  crypto.getRandomValues(idBuf);
  return idBuf[0]!;
}

export interface ForwarderDeps {
  upstreams: () => Upstream[];
  logger: Logger;
  timeoutMs: number;
  cacheSize: number;
  maxNegativeTTL: number;
  /** Cap on cached TTLs (cacheDNS.cacheTTL in cache mode); 0 = the upstream's TTLs. */
  maxTTL?: number;
  now?: () => number;
}

export interface ForwarderStats {
  queries: number;
  cacheHits: number;
  upstreamQueries: number;
  upstreamFailures: number;
  tcpRetries: number;
  cacheEntries: number;
}

const sameQuestion = (a: Uint8Array, b: Uint8Array) => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    let x = a[i]!, y = b[i]!;
    if (x >= 65 && x <= 90) x += 32;
    if (y >= 65 && y <= 90) y += 32;
    if (x !== y) return false;
  }
  return true;
};

export class Forwarder {
  private cache = new Map<string, CacheEntry>();
  private inflight = new Map<string, Promise<Uint8Array | null>>();
  /** Queries waiting for an upstream's answer (stop() ends them). */
  private readonly pending = new Set<Pending>();
  private readonly now: () => number;
  private warnedNoUpstream = false;
  readonly stats: ForwarderStats = { queries: 0, cacheHits: 0, upstreamQueries: 0, upstreamFailures: 0, tcpRetries: 0, cacheEntries: 0 };

  constructor(private readonly deps: ForwarderDeps) {
    this.now = deps.now ?? (() => performance.now());
  }

  async stop(): Promise<void> {
    for (const p of [...this.pending]) p.resolve(null);
    this.pending.clear();
  }

  /** The live cache entry for a key (the server keeps hot copies of these); null when absent or expired. */
  entry(key: string): CacheEntry | null {
    const e = this.cache.get(key);
    return e && this.now() < e.expiresAt ? e : null;
  }

  /**
   * A cached answer for this client, without going async (the server's hot path); null on a miss.
   * `e` skips the lookup when the caller already holds the entry (the server's hot table, which passes no key).
   */
  cached(key: string | null, query: Uint8Array, qEnd: number, e: CacheEntry | null = key === null ? null : (this.cache.get(key) ?? null)): Uint8Array | null {
    const out = this.answerFrom(key, e, query, qEnd);
    if (out) {
      this.stats.queries++;
      this.stats.cacheHits++;
    }
    return out;
  }

  /** Entry `e` of `key` answered for this client with its TTLs aged; null when absent or expired. */
  private answerFrom(key: string | null, e: CacheEntry | null, query: Uint8Array, qEnd: number): Uint8Array | null {
    if (!e) return null;
    const now = this.now();
    if (now >= e.expiresAt) {
      if (key !== null && this.cache.get(key) === e) this.cache.delete(key);
      return null;
    }
    // Eviction is by insertion order (oldest first) plus TTL expiry: re-inserting on every hit would cost two
    // Map operations per query on the hottest forwarded names for little gain.
    const out = this.rewrite(e.bytes, e.qEnd, query, qEnd);
    ageTTLs(out, e, now);
    return out;
  }

  /**
   * Answer `query` (the client's bytes) for cache key `key`. Returns the response with the client's ID and
   * question, or SERVFAIL when no upstream answers.
   */
  async resolve(query: Uint8Array, key: string): Promise<Uint8Array> {
    const qEnd = questionEnd(query);
    const hit = this.cached(key, query, qEnd);
    if (hit) return hit;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.ask(query, qEnd).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    const upstreamBytes = await p;
    this.stats.queries++;
    if (!upstreamBytes) return errorResponse(query, RCODE.SERVFAIL, true);
    this.store(key, upstreamBytes);
    return this.answerFrom(key, this.cache.get(key) ?? null, query, qEnd) ?? this.rewrite(upstreamBytes, questionEnd(upstreamBytes), query, qEnd);
  }

  /** Copy an answer for this client: its ID, its RD bit, its question bytes (letter case). */
  private rewrite(src: Uint8Array, srcQEnd: number, query: Uint8Array, qEnd: number): Uint8Array {
    const out = new Uint8Array(src);
    out[0] = query[0]!;
    out[1] = query[1]!;
    out[2] = (out[2]! & ~(RD >> 8)) | (query[2]! & (RD >> 8));
    if (qEnd > 12 && srcQEnd === qEnd) out.set(query.subarray(12, qEnd), 12);
    return out;
  }

  private store(key: string, bytes: Uint8Array): void {
    if (this.deps.cacheSize === 0) return;
    const rcode = bytes[3]! & 0x0f;
    if (rcode !== RCODE.NOERROR && rcode !== RCODE.NXDOMAIN) return;
    if (bytes[2]! & 0x02) return; // truncated answers are not reusable
    const t = ttlOffsets(bytes);
    const qEnd = questionEnd(bytes);
    if (!t || qEnd < 0) return;
    const negative = rcode === RCODE.NXDOMAIN || readU16(bytes, 6) === 0;
    let ttl = t.offsets.length ? t.minTTL : 5;
    if (negative) ttl = Math.min(ttl, this.deps.maxNegativeTTL);
    if (this.deps.maxTTL) ttl = Math.min(ttl, this.deps.maxTTL);
    if (ttl <= 0) return;
    // Serve no TTL longer than we keep the entry (cacheDNS.cacheTTL, negative cap), as CoreDNS's cache does.
    for (const o of t.offsets) {
      const v = ((bytes[o]! << 24) | (bytes[o + 1]! << 16) | (bytes[o + 2]! << 8) | bytes[o + 3]!) >>> 0;
      if (v > ttl) {
        bytes[o] = ttl >>> 24;
        bytes[o + 1] = (ttl >>> 16) & 0xff;
        bytes[o + 2] = (ttl >>> 8) & 0xff;
        bytes[o + 3] = ttl & 0xff;
      }
    }
    const now = this.now();
    this.cache.delete(key);
    this.cache.set(key, { bytes, qEnd, offsets: t.offsets, storedAt: now, expiresAt: now + ttl * 1000 });
    while (this.cache.size > this.deps.cacheSize) this.cache.delete(this.cache.keys().next().value!);
    this.stats.cacheEntries = this.cache.size;
  }

  /** Try each upstream in turn (twice round the list at most); null when none answers. */
  private async ask(query: Uint8Array, qEnd: number): Promise<Uint8Array | null> {
    const ups = this.deps.upstreams();
    if (!ups.length) {
      if (!this.warnedNoUpstream) this.deps.logger.warn('no upstream DNS servers: names outside the cluster get SERVFAIL', { fix: 'set modules.edgeDNS.upstreamServers or list a nameserver in resolv.conf that is not this agent' });
      this.warnedNoUpstream = true;
      return null;
    }
    this.warnedNoUpstream = false;
    const question = query.subarray(12, qEnd);
    const tries = Math.min(ups.length * 2, 6);
    for (let i = 0; i < tries; i++) {
      const up = ups[i % ups.length]!;
      this.stats.upstreamQueries++;
      let r = await this.udp(query, question, up);
      if (r && r[2]! & 0x02) {
        this.stats.tcpRetries++;
        r = await this.tcp(query, question, up);
      }
      if (r) return r;
      this.stats.upstreamFailures++;
    }
    this.deps.logger.warn('no upstream answered', { upstreams: ups.map(formatUpstream).join(','), question: new TextDecoder().decode(question.subarray(0, Math.min(question.length, 64))) });
    return null;
  }

  /** One query over UDP from its own socket (a random source port), connected to the upstream. */
  private async udp(query: Uint8Array, question: Uint8Array, up: Upstream): Promise<Uint8Array | null> {
    const id = randomId();
    const out = new Uint8Array(query);
    writeU16(out, 0, id);
    const got = Promise.withResolvers<Uint8Array | null>();
    let sock: Bun.udp.ConnectedSocket<'buffer'> | null = null;
    const p: Pending = {
      resolve: (b) => {
        if (!this.pending.delete(p)) return;
        clearTimeout(timer);
        sock?.close();
        got.resolve(b);
      },
    };
    this.pending.add(p);
    const timer = setTimeout(() => p.resolve(null), this.deps.timeoutMs);
    try {
      sock = await Bun.udpSocket({
        hostname: isIP(up.host) === 6 ? '::' : '0.0.0.0',
        connect: { hostname: up.host, port: up.port },
        socket: {
          data: (_s, buf) => {
            if (buf.length < 12 || readU16(buf, 0) !== id) return;
            const qEnd = questionEnd(buf);
            if (qEnd < 0 || !sameQuestion(buf.subarray(12, qEnd), question)) return;
            p.resolve(new Uint8Array(buf));
          },
          // ICMP port unreachable from a dead upstream arrives as an error; the timeout moves on.
          error: () => {},
        },
      });
      if (!this.pending.has(p)) sock.close(); // stopped or timed out while the socket opened
      else sock.send(out);
    } catch (err) {
      this.deps.logger.debug('upstream send failed', { upstream: formatUpstream(up), error: describeError(err) });
      p.resolve(null);
    }
    return got.promise;
  }

  /** One query over TCP (2-byte length prefix), with the same timeout. */
  private tcp(query: Uint8Array, question: Uint8Array, up: Upstream): Promise<Uint8Array | null> {
    return new Promise((resolve) => {
      const frames = new Frames16();
      let done = false;
      const finish = (r: Uint8Array | null, s?: { end(): void }) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        s?.end();
        resolve(r);
      };
      const timer = setTimeout(() => finish(null, sock), this.deps.timeoutMs);
      let sock: { end(): void } | undefined;
      const id = randomId();
      const msg = new Uint8Array(query.length + 2);
      writeU16(msg, 0, query.length);
      msg.set(query, 2);
      writeU16(msg, 2, id);
      Bun.connect({
        hostname: up.host,
        port: up.port,
        socket: {
          open: (s) => {
            sock = s;
            s.write(msg);
          },
          data: (s, chunk) => {
            frames.push(chunk, (frame) => {
              const qEnd = questionEnd(frame);
              finish(readU16(frame, 0) === id && qEnd > 0 && sameQuestion(frame.subarray(12, qEnd), question) ? frame.slice() : null, s);
            });
          },
          close: () => finish(null),
          error: () => finish(null),
          connectError: () => finish(null),
        },
      }).catch(() => finish(null));
    });
  }
}
