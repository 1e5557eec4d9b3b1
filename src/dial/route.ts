/**
 * dial/ — the one decision of how an endpoint is reached: from here (a socket), or through the node it is on (the
 * tunnel). Every consumer asks this, so the proxy, SOCKS5 and the gateway agree on it.
 *
 *   const dialer = new Dialer({ nodeName: 'edge-a', directCIDRs: ['192.168.1.0/24'], remote: tunnel });
 *   dialer.isLocal({ nodeName: 'edge-b', ip: '10.244.1.7' })   // false: through edge-b's agent
 *
 * Local: endpoints without a node (manual Endpoints pointing at external addresses), this node's own, addresses
 * in edgeTunnel.directCIDRs, and hostNetwork endpoints at the address of an authenticated direct connection to
 * their node (the tunnel's `reachesDirectly`). Everything else goes through the tunnel, as in the original,
 * which tunnels every cross-node connection even inside one LAN.
 */
import { cidrMatcher } from '../net/cidr.ts';
import type { RemoteDialer } from './contract.ts';

export interface DialerDeps {
  nodeName: string;
  /** Endpoint addresses reached directly even when their node is another one (edgeTunnel.directCIDRs). */
  directCIDRs?: readonly string[];
  /** The tunnel; absent when edgeTunnel is off (remote endpoints then count as failed dials). */
  remote?: RemoteDialer;
}

/** An endpoint as far as routing cares. */
export interface Placed {
  nodeName: string;
  ip: string;
}

export class Dialer {
  readonly remote: RemoteDialer | undefined;
  private readonly direct: (ip: string) => boolean;

  constructor(private readonly d: DialerDeps) {
    this.remote = d.remote;
    this.direct = cidrMatcher(d.directCIDRs ?? []);
  }

  get nodeName(): string {
    return this.d.nodeName;
  }

  /** Dialed from this node (true) or through the tunnel to the endpoint's node (false). A bound function: pass it as is. */
  readonly isLocal = (ep: Placed): boolean =>
    ep.nodeName === '' || ep.nodeName === this.d.nodeName || this.direct(ep.ip) || (this.remote?.reachesDirectly?.(ep.nodeName, ep.ip) ?? false);
}
