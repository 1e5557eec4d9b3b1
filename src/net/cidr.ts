/**
 * net/ — CIDR membership for the dialer's "reach it directly" decision (edgeTunnel.directCIDRs).
 *
 *   const direct = cidrMatcher(['192.168.1.0/24', 'fd00::/8']);
 *   direct('192.168.1.20') // true
 */
import { isIP } from 'node:net';

function toBigInt(ip: string): { v: bigint; bits: number } | null {
  const fam = isIP(ip);
  if (fam === 4) {
    const p = ip.split('.').map(Number);
    return { v: BigInt(((p[0]! << 24) >>> 0) + (p[1]! << 16) + (p[2]! << 8) + p[3]!), bits: 32 };
  }
  if (fam === 6) {
    let s = ip;
    const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
    if (v4) {
      const p = v4[1]!.split('.').map(Number);
      s = s.slice(0, -v4[1]!.length) + `${((p[0]! << 8) | p[1]!).toString(16)}:${((p[2]! << 8) | p[3]!).toString(16)}`;
    }
    const [head, tail] = s.split('::') as [string, string | undefined];
    const h = head ? head.split(':') : [];
    const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
    const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
    let v = 0n;
    for (const g of groups) v = (v << 16n) | BigInt(parseInt(g || '0', 16));
    return { v, bits: 128 };
  }
  return null;
}

/** A predicate over IP strings; malformed CIDRs are skipped (config validation reports them). */
export function cidrMatcher(cidrs: readonly string[]): (ip: string) => boolean {
  const nets: { v: bigint; bits: number; mask: bigint }[] = [];
  for (const c of cidrs) {
    const [addr, len] = c.split('/');
    const a = addr ? toBigInt(addr) : null;
    const n = Number(len);
    if (!a || !Number.isInteger(n) || n < 0 || n > a.bits) continue;
    const mask = n === 0 ? 0n : ((1n << BigInt(n)) - 1n) << BigInt(a.bits - n);
    nets.push({ v: a.v & mask, bits: a.bits, mask });
  }
  if (nets.length === 0) return () => false;
  return (ip) => {
    const a = toBigInt(ip);
    return !!a && nets.some((n) => n.bits === a.bits && (a.v & n.mask) === n.v);
  };
}
