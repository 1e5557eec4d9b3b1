/**
 * gateway/ — the addresses the gateway listens on, and following them as the machine changes.
 *
 * Selection, with the original's keys: `nic` ("*" or "" = every interface, else a comma list of names),
 * `includeIP` ("*" or "" = keep all, else a comma list of IPs and CIDRs to keep), `excludeIP` (a comma list of IPs
 * and CIDRs to drop; "*", the default, drops nothing, as in the original). IPv4 addresses, loopback included.
 *
 * The original computes this once at start. Here it is re-read every second: `os.networkInterfaces()` is one
 * getifaddrs(3) call (tens of microseconds), no process is spawned, and a second is well inside the 2 s an
 * operator is promised; a netlink socket would need bun:ffi for the same result.
 *
 *   const w = new AddressWatch({ nic: '*', includeIP: '*', excludeIP: '*' }, (ips) => reconcile(ips))
 *   w.start(); … w.stop()
 */
import { networkInterfaces } from 'node:os';
import { cidrMatcher } from '../net/cidr.ts';

export interface AddressSelection {
  nic: string;
  includeIP: string;
  excludeIP: string;
}

const items = (v: string): string[] => v.split(',').map((x) => x.trim()).filter(Boolean);
const asCidr = (v: string): string => (v.includes('/') ? v : v.includes(':') ? `${v}/128` : `${v}/32`);

/** The selected IPv4 addresses, sorted, from an interface list (os.networkInterfaces()'s shape). */
export function selectAddresses(sel: AddressSelection, ifs: ReturnType<typeof networkInterfaces>): string[] {
  const names = sel.nic.trim() === '' || sel.nic.trim() === '*' ? null : new Set(items(sel.nic));
  const include = sel.includeIP.trim() === '' || sel.includeIP.trim() === '*' ? null : cidrMatcher(items(sel.includeIP).map(asCidr));
  const exclude = sel.excludeIP.trim() === '' || sel.excludeIP.trim() === '*' ? null : cidrMatcher(items(sel.excludeIP).map(asCidr));
  const out = new Set<string>();
  for (const [name, addrs] of Object.entries(ifs)) {
    // Alias labels (eth0:1) belong to their device.
    if (names && !names.has(name) && !names.has(name.split(':')[0]!)) continue;
    for (const a of addrs ?? []) {
      if (a.family !== 'IPv4') continue;
      if (include && !include(a.address)) continue;
      if (exclude?.(a.address)) continue;
      out.add(a.address);
    }
  }
  return [...out].sort();
}

export class AddressWatch {
  private timer: ReturnType<typeof setInterval> | null = null;
  private current: string[] = [];

  constructor(
    private readonly sel: AddressSelection,
    private readonly onChange: (addresses: readonly string[]) => void,
    private readonly o: { pollMs?: number; read?: () => ReturnType<typeof networkInterfaces> } = {},
  ) {}

  get addresses(): readonly string[] {
    return this.current;
  }

  /** Reads once (calling onChange with the first set), then every pollMs. */
  start(): void {
    this.check(true);
    this.timer = setInterval(() => this.check(false), this.o.pollMs ?? 1000);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private check(first: boolean): void {
    const next = selectAddresses(this.sel, (this.o.read ?? networkInterfaces)());
    if (!first && next.join() === this.current.join()) return;
    this.current = next;
    this.onChange(next);
  }
}
