/**
 * Consistent hashing with bounded loads, with the semantics of buraksezer/consistent v0.9 and xxHash64 (seed 0)
 * that the Go original uses, so a key maps to the same member as on a Go node:
 * - each member contributes `replicationFactor` ring points: xxh64(member + decimal(i));
 * - partition p (0..partitionCount-1) hashes as xxh64(uint64 LE p) and goes to the first point at or after it
 *   whose member still has room (load + 1 ≤ ceil(floor(partitionCount / members) × load));
 * - a key goes to partition xxh64(key) mod partitionCount.
 * Fixed: the original panics when every member is full (e.g. more members than partitions); here the
 * bound grows to what the member count needs instead.
 */
export interface RingConfig {
  partitionCount: number;
  replicationFactor: number;
  load: number;
}

const xxh = (s: string | Uint8Array) => Bun.hash.xxHash64(s);

export class BoundedLoadRing {
  private members: string[] = [];
  private partitions: string[] = [];

  constructor(readonly cfg: RingConfig) {}

  /** Replace the member set; partitions are recomputed only when it changed. */
  setMembers(members: readonly string[]): void {
    const next = [...new Set(members)].sort();
    if (next.length === this.members.length && next.every((m, i) => m === this.members[i])) return;
    this.members = next;
    this.distribute();
  }

  size(): number {
    return this.members.length;
  }

  private distribute(): void {
    const { partitionCount: pc, replicationFactor: rf, load } = this.cfg;
    this.partitions = [];
    const n = this.members.length;
    if (n === 0) return;
    const points: { h: bigint; m: string }[] = [];
    for (const m of this.members) for (let i = 0; i < rf; i++) points.push({ h: xxh(m + String(i)), m });
    points.sort((a, b) => (a.h < b.h ? -1 : a.h > b.h ? 1 : 0));
    const avg = Math.max(Math.ceil(Math.floor(pc / n) * load), Math.ceil(pc / n));
    const loads = new Map<string, number>();
    const buf = new Uint8Array(8);
    const view = new DataView(buf.buffer);
    for (let p = 0; p < pc; p++) {
      view.setBigUint64(0, BigInt(p), true);
      const key = xxh(buf);
      let lo = 0, hi = points.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (points[mid]!.h >= key) hi = mid;
        else lo = mid + 1;
      }
      let i = lo >= points.length ? 0 : lo;
      for (;;) {
        const m = points[i]!.m;
        const l = loads.get(m) ?? 0;
        if (l + 1 <= avg) {
          loads.set(m, l + 1);
          this.partitions[p] = m;
          break;
        }
        if (++i >= points.length) i = 0;
      }
    }
  }

  /** Each partition's member, partition by partition (empty for an empty ring): the kernel path's hash table. */
  table(): readonly string[] {
    return this.partitions;
  }

  /** The member owning `key`, or undefined for an empty ring. */
  locate(key: string | Uint8Array): string | undefined {
    if (!this.partitions.length) return undefined;
    return this.partitions[Number(xxh(key) % BigInt(this.cfg.partitionCount))];
  }
}
