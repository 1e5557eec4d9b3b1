/**
 * Just enough of the DNS wire format for the hot path: header fields, the extent and lower-cased text of the
 * single question, a trailing OPT record, and the offsets of TTL fields (to age cached answers in place).
 * Everything unusual goes to dns-packet, the general codec. Nothing here throws on bad input: it returns null.
 */
export const QR = 0x8000;
export const AA = 0x0400;
export const TC = 0x0200;
export const RD = 0x0100;
export const RA = 0x0080;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, AXFR: 252, ANY: 255 } as const;
export const CLASS_IN = 1;
export const CLASS_ANY = 255;

/** The common query: one question, no answer/authority records, at most one OPT. */
export interface SimpleQuery {
  id: number;
  flags: number;
  opcode: number;
  /** Lower-cased name without the trailing dot ("" for the root). */
  name: string;
  qtype: number;
  qclass: number;
  /** Offset just past the question (12 + name + 4). */
  qEnd: number;
  /** EDNS: the client's UDP payload size, or 0 when it sent no OPT. */
  ednsSize: number;
  /** The client set the DNSSEC-OK bit. */
  dnssecOk: boolean;
}

export function readU16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

export function writeU16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

/**
 * Parse a query of the simple shape, or return null (the caller then uses the general codec, which decides
 * between FORMERR and an answer). Labels are checked (≤ 63 bytes, name ≤ 255, no compression in the question).
 */
export function parseSimpleQuery(b: Uint8Array): SimpleQuery | null {
  const len = b.length;
  if (len < 17) return null;
  const flags = readU16(b, 2);
  if (readU16(b, 4) !== 1 || readU16(b, 6) !== 0 || readU16(b, 8) !== 0) return null;
  const ar = readU16(b, 10);
  if (ar > 1) return null;
  let o = 12;
  let name = '';
  for (;;) {
    if (o >= len) return null;
    const l = b[o]!;
    if (l === 0) {
      o++;
      break;
    }
    if (l > 63 || o + 1 + l > len) return null;
    if (name.length) name += '.';
    for (let i = o + 1; i <= o + l; i++) {
      let c = b[i]!;
      if (c >= 65 && c <= 90) c += 32;
      // Dots or odd bytes inside a label cannot be represented in our text keys: let dns-packet handle them.
      if (c === 46 || c < 33 || c > 126) return null;
      name += String.fromCharCode(c);
    }
    o += 1 + l;
    if (o - 12 > 255) return null;
  }
  if (o + 4 > len) return null;
  const qtype = readU16(b, o);
  const qclass = readU16(b, o + 2);
  const qEnd = o + 4;
  let ednsSize = 0;
  let dnssecOk = false;
  if (ar === 1) {
    // OPT: root name (0), type 41, class = UDP size, ttl = ext-rcode|version|flags, rdlength, rdata.
    if (qEnd + 11 > len || b[qEnd] !== 0 || readU16(b, qEnd + 1) !== TYPE.OPT) return null;
    const rdlen = readU16(b, qEnd + 9);
    if (qEnd + 11 + rdlen !== len) return null;
    if (b[qEnd + 6] !== 0) return null; // EDNS version other than 0: BADVERS, general path
    ednsSize = Math.max(512, readU16(b, qEnd + 3));
    dnssecOk = (b[qEnd + 7]! & 0x80) !== 0;
  } else if (qEnd !== len) {
    return null;
  }
  return { id: readU16(b, 0), flags, opcode: (flags >> 11) & 0xf, name, qtype, qclass, qEnd, ednsSize, dnssecOk };
}

/** Skip a possibly compressed name; returns the offset after it or -1. Loops are bounded by the hop count. */
export function skipName(b: Uint8Array, o: number): number {
  let hops = 0;
  while (o < b.length) {
    const l = b[o]!;
    if (l === 0) return o + 1;
    if ((l & 0xc0) === 0xc0) return o + 2 <= b.length ? o + 2 : -1;
    if (l > 63) return -1;
    o += 1 + l;
    if (++hops > 128) return -1;
  }
  return -1;
}

/**
 * Offsets of the TTL fields of every answer, authority and additional record (OPT excluded), plus the smallest
 * TTL. Null when the message does not parse.
 */
export function ttlOffsets(b: Uint8Array): { offsets: number[]; minTTL: number } | null {
  if (b.length < 12) return null;
  const qd = readU16(b, 4);
  const rr = readU16(b, 6) + readU16(b, 8) + readU16(b, 10);
  let o = 12;
  for (let i = 0; i < qd; i++) {
    o = skipName(b, o);
    if (o < 0 || o + 4 > b.length) return null;
    o += 4;
  }
  const offsets: number[] = [];
  let minTTL = Infinity;
  for (let i = 0; i < rr; i++) {
    o = skipName(b, o);
    if (o < 0 || o + 10 > b.length) return null;
    const type = readU16(b, o);
    const rdlen = readU16(b, o + 8);
    if (type !== TYPE.OPT) {
      offsets.push(o + 4);
      const ttl = ((b[o + 4]! << 24) | (b[o + 5]! << 16) | (b[o + 6]! << 8) | b[o + 7]!) >>> 0;
      if (ttl < minTTL) minTTL = ttl;
    }
    o += 10 + rdlen;
    if (o > b.length) return null;
  }
  return { offsets, minTTL: minTTL === Infinity ? 0 : minTTL };
}

/** The offset where the question section ends, or -1. */
export function questionEnd(b: Uint8Array): number {
  if (b.length < 12) return -1;
  let o = 12;
  for (let i = readU16(b, 4); i > 0; i--) {
    o = skipName(b, o);
    if (o < 0 || o + 4 > b.length) return -1;
    o += 4;
  }
  return o;
}

/**
 * An error response built from the raw query: ID and opcode kept, QR set, RD copied, the question echoed when
 * it can be located, never anything else. Used for FORMERR, NOTIMP, SERVFAIL and REFUSED.
 */
export function errorResponse(query: Uint8Array, rcode: number, echoQuestion: boolean): Uint8Array {
  let qEnd = echoQuestion && readU16(query, 4) === 1 ? questionEnd(query) : -1;
  if (qEnd < 0) qEnd = 12;
  const out = new Uint8Array(qEnd);
  out.set(query.subarray(0, qEnd));
  const flags = readU16(query, 2);
  writeU16(out, 2, QR | (flags & 0x7800) | (flags & RD) | RA | rcode);
  writeU16(out, 4, qEnd > 12 ? 1 : 0);
  writeU16(out, 6, 0);
  writeU16(out, 8, 0);
  writeU16(out, 10, 0);
  return out;
}

/** Minimal OPT record advertising our UDP payload size (no options). */
export function optRecord(udpSize: number): Uint8Array {
  const o = new Uint8Array(11);
  writeU16(o, 1, TYPE.OPT);
  writeU16(o, 3, udpSize);
  return o;
}

/** Whether the name at `o` is, label for label and case-insensitively, the uncompressed name at `q`. */
function sameNameAt(b: Uint8Array, o: number, q: number, qLen: number): boolean {
  for (let i = 0; i < qLen; i++) {
    let x = b[o + i]!, y = b[q + i]!;
    if (x >= 65 && x <= 90) x += 32;
    if (y >= 65 && y <= 90) y += 32;
    if (x !== y) return false;
  }
  return true;
}

/**
 * Replace every record owner name equal to the question name by a pointer to offset 12. dns-packet writes
 * names uncompressed; this is the compression that matters (answers for the name asked) and keeps large
 * answer sets under UDP limits. Returns the input unchanged if anything looks unusual.
 */
export function compressOwners(b: Uint8Array): Uint8Array {
  const qEnd = questionEnd(b);
  if (qEnd < 0 || readU16(b, 4) !== 1) return b;
  const qLen = qEnd - 4 - 12;
  const rr = readU16(b, 6) + readU16(b, 8) + readU16(b, 10);
  const parts: Uint8Array[] = [b.subarray(0, qEnd)];
  const ptr = new Uint8Array([0xc0, 12]);
  let o = qEnd;
  let saved = 0;
  for (let i = 0; i < rr; i++) {
    const end = skipName(b, o);
    if (end < 0 || end + 10 > b.length) return b;
    const rdEnd = end + 10 + readU16(b, end + 8);
    if (rdEnd > b.length) return b;
    if (end - o === qLen && sameNameAt(b, o, 12, qLen)) {
      parts.push(ptr, b.subarray(end, rdEnd));
      saved += qLen - 2;
    } else {
      parts.push(b.subarray(o, rdEnd));
    }
    o = rdEnd;
  }
  if (o !== b.length || saved <= 0) return b;
  const out = new Uint8Array(b.length - saved);
  let w = 0;
  for (const p of parts) {
    out.set(p, w);
    w += p.length;
  }
  return out;
}

/**
 * The string key of a question whose extent a scan already checked: the name bytes lower-cased, type and class
 * verbatim, and the EDNS state (0 none, 1 EDNS, 2 EDNS with DNSSEC OK). Two native slices, no per-character
 * work. Label lengths are at most 63, below 'A' (65), so lower-casing the name bytes can only change letters.
 */
export function questionKey(b: Buffer, qEnd: number, edns: number): string {
  const nameEnd = qEnd - 4;
  return b.toString('latin1', 12, nameEnd).toLowerCase() + b.toString('latin1', nameEnd, qEnd) + ['', 'E', 'D'][edns];
}
