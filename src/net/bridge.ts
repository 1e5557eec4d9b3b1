/**
 * net/ — interfaces and addresses.
 *
 * The original always creates a Linux bridge `edgemesh0` carrying 169.254.96.16/32 and binds DNS and the proxy
 * there. We create it only when a module is configured to listen on that address and it is missing; without
 * root that is a clear error naming the key to change. (The kernel here has no `dummy` link type; a bridge
 * works everywhere.)
 */
import { networkInterfaces } from 'node:os';
import { EdgeMeshError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';

export function hasLocalAddress(ip: string): boolean {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.address === ip) return true;
  return false;
}

async function ip(args: string[]): Promise<{ code: number; err: string }> {
  const p = Bun.spawn(['ip', ...args], { stdout: 'ignore', stderr: 'pipe' });
  const err = await new Response(p.stderr).text();
  return { code: await p.exited, err: err.trim() };
}

/** Make sure `ipAddr` is assigned to bridge `name` (created when missing). Idempotent. */
export async function ensureBridge(name: string, ipAddr: string, logger: Logger): Promise<void> {
  if (hasLocalAddress(ipAddr)) return;
  if (process.getuid?.() !== 0) {
    throw new EdgeMeshError('CONFIG_INVALID', `${ipAddr} is not on this node and creating the ${name} bridge needs root (or CAP_NET_ADMIN); run as root, or set modules.edgeDNS.listenAddress to an address this node has (e.g. 127.0.0.1)`);
  }
  if (!Bun.which('ip')) throw new EdgeMeshError('INTERNAL', `cannot create the ${name} bridge: the "ip" command (iproute2) is missing`);
  const show = await ip(['link', 'show', 'dev', name]);
  if (show.code !== 0) {
    const add = await ip(['link', 'add', name, 'type', 'bridge']);
    if (add.code !== 0) throw new EdgeMeshError('INTERNAL', `cannot create bridge ${name}: ${add.err}`);
    logger.info('created bridge device', { device: name });
  }
  const addr = await ip(['addr', 'add', `${ipAddr}/32`, 'dev', name]);
  if (addr.code !== 0 && !/exists/i.test(addr.err)) throw new EdgeMeshError('INTERNAL', `cannot add ${ipAddr} to ${name}: ${addr.err}`);
  const up = await ip(['link', 'set', name, 'up']);
  if (up.code !== 0) throw new EdgeMeshError('INTERNAL', `cannot bring ${name} up: ${up.err}`);
}

/**
 * A module about to listen on `host`: when that is the bridge IP (the original's address for DNS and the proxy),
 * make sure the bridge carries it. Any other address is the operator's to provide.
 */
export async function ensureListenAddress(host: string, common: { bridgeDeviceName: string; bridgeDeviceIP: string }, logger: Logger): Promise<void> {
  if (host === common.bridgeDeviceIP) await ensureBridge(common.bridgeDeviceName, host, logger);
}
