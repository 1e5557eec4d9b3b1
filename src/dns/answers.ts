/**
 * dns/ — the answers the server finds by question without building anything: its prepared zone answers (built
 * once per name, type, class and EDNS state; dropped when the zone changes), and an allocation-free index by a
 * hash of the lower-cased question bytes that finds those and the forwarder's cached answers. The forwarder
 * owns its entries (their expiry, their TTL ageing): the index only points at them, and an expired one found
 * there is dropped from the index.
 *
 *   const a = new AnswerCache();
 *   a.forZone(zone);
 *   if (a.scan(query)) a.hotEntry(query);   // after scan(): a.qEnd, a.tag, a.edns describe the question
 */
import type { CacheEntry } from './forwarder.ts';
import { TYPE } from './wire.ts';
import type { Zone } from './zone.ts';

/** Prepared answers (and index entries) kept at most; random names under the domain must not grow them without bound. */
const MAX_PREPARED = 50_000;

export interface Prepared {
  bytes: Uint8Array;
  qEnd: number;
  /** The same answer cut down to header + question (+ OPT), TC set: for UDP clients whose limit it exceeds. */
  truncated: Uint8Array;
}

/** An index entry: the lower-cased question bytes (+ EDNS tag) and what answers them. */
export interface HotEntry {
  question: Uint8Array;
  /** A zone answer… */
  prepared: Prepared | null;
  /** …or a forwarded answer from the forwarder's cache (expires, TTLs age). */
  forwarded: CacheEntry | null;
  next: HotEntry | null;
}

export class AnswerCache {
  /** Zone answers by the question's string key (wire.ts questionKey). */
  private readonly byKey = new Map<string, Prepared>();
  /** Hash of the question bytes → entries: the allocation-free front of `byKey` and of the forwarder's cache. */
  private readonly hot = new Map<number, HotEntry>();
  private zone: Zone | null = null;
  // Results of scan(), kept in fields so the hot path allocates nothing.
  hash = 0;
  qEnd = 0;
  tag = 0;
  edns = 0;

  /** The zone answers are built from; a new zone makes every prepared answer stale. */
  forZone(zone: Zone | null): void {
    if (this.zone === zone) return;
    this.byKey.clear();
    this.hot.clear();
    this.zone = zone;
  }

  /** After a successful scan(): the entry for this question, or null. */
  hotEntry(b: Uint8Array): HotEntry | null {
    for (let e: HotEntry | null | undefined = this.hot.get(this.hash); e; e = e.next) if (this.sameQuestion(e.question, b)) return e;
    return null;
  }

  /** After a successful scan(): forget the entries under this question's hash (one of them expired). */
  dropHot(): void {
    this.hot.delete(this.hash);
  }

  prepared(key: string): Prepared | undefined {
    return this.byKey.get(key);
  }

  storePrepared(key: string, p: Prepared): void {
    if (this.byKey.size >= MAX_PREPARED) {
      this.byKey.clear();
      this.hot.clear();
    }
    this.byKey.set(key, p);
  }

  /**
   * Walk a query of the simple shape, hashing (FNV-1a) its lower-cased question bytes and EDNS state into
   * hash/qEnd/tag/edns. False for any other shape (the general path then decides).
   */
  scan(b: Uint8Array): boolean {
    const len = b.length;
    if (len < 17 || b[4] !== 0 || b[5] !== 1 || b[6] !== 0 || b[7] !== 0 || b[8] !== 0 || b[9] !== 0 || b[10] !== 0 || (b[2]! & 0xf8) !== 0) return false;
    const ar = b[11]!;
    if (ar > 1) return false;
    let h = 0x811c9dc5;
    let o = 12;
    for (;;) {
      const l = b[o]!;
      h = Math.imul(h ^ l, 0x01000193);
      if (l === 0) break;
      if (l > 63 || o + 1 + l >= len) return false;
      for (let i = o + 1, e = o + 1 + l; i < e; i++) {
        let c = b[i]!;
        if (c >= 65 && c <= 90) c += 32;
        h = Math.imul(h ^ c, 0x01000193);
      }
      o += 1 + l;
      if (o - 12 > 255) return false;
    }
    const qEnd = o + 5;
    if (qEnd > len) return false;
    for (let i = o + 1; i < qEnd; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
    let tag = 0;
    let edns = 0;
    if (ar === 1) {
      if (qEnd + 11 > len || b[qEnd] !== 0 || b[qEnd + 1] !== 0 || b[qEnd + 2] !== TYPE.OPT || b[qEnd + 6] !== 0) return false;
      if (qEnd + 11 + ((b[qEnd + 9]! << 8) | b[qEnd + 10]!) !== len) return false;
      edns = Math.max(512, (b[qEnd + 3]! << 8) | b[qEnd + 4]!);
      tag = b[qEnd + 7]! & 0x80 ? 2 : 1;
    } else if (qEnd !== len) {
      return false;
    }
    this.hash = Math.imul(h ^ tag, 0x01000193) >>> 0;
    this.qEnd = qEnd;
    this.tag = tag;
    this.edns = edns;
    return true;
  }

  /** The stored question (lower-cased bytes + tag) equals this query's (after a successful scan). */
  private sameQuestion(stored: Uint8Array, b: Uint8Array): boolean {
    const n = this.qEnd - 12;
    if (stored.length !== n + 1 || stored[n] !== this.tag) return false;
    for (let i = 0; i < n; i++) {
      let c = b[12 + i]!;
      if (c >= 65 && c <= 90) c += 32;
      if (c !== stored[i]) return false;
    }
    return true;
  }

  /**
   * Index a prepared zone answer or a forwarder cache entry under the question that the last successful scan()
   * (of this same query) described.
   */
  remember(b: Uint8Array, p: Prepared | null, f: CacheEntry | null): void {
    const n = this.qEnd - 12;
    const q = new Uint8Array(n + 1);
    for (let i = 0; i < n; i++) {
      let c = b[12 + i]!;
      if (c >= 65 && c <= 90) c += 32;
      q[i] = c;
    }
    q[n] = this.tag;
    for (let e: HotEntry | null | undefined = this.hot.get(this.hash); e; e = e.next) if (this.sameQuestion(e.question, b)) return;
    if (this.hot.size >= MAX_PREPARED) this.hot.clear();
    this.hot.set(this.hash, { question: q, prepared: p, forwarded: f, next: this.hot.get(this.hash) ?? null });
  }
}
