/**
 * The SOCKS5 proxy, as the original's: reach another node by its Kubernetes node name, typically for ssh:
 *   ssh -o ProxyCommand="nc --proxy-type socks5 --proxy 169.254.96.16:10800 %h %p" user@edge-node-2
 *
 * Only CONNECT to a domain name that is a node name in the catalog, other than this node, at a port of
 * edgeTunnel.nodePorts (ssh, 22, by default; the original allows any port); the node's InternalIP (else
 * ExternalIP) is dialed. Unlike the original, every refusal gets the proper SOCKS5 reply code
 * (not a silent close), parsing copes with fields split across reads, and connections do not share state.
 * With the tunnel on, the target node's agent dials its own address (docs/proxy.md); without it, the node is dialed directly.
 */
import type { CatalogSnapshot } from '../catalog/catalog.ts';
import type { LbEndpoint } from '../lb/balancer.ts';
import type { Logger } from '../obs/logger.ts';
import type { RouteHook } from './tcp.ts';

export const REP = { OK: 0, FAILURE: 1, NOT_ALLOWED: 2, HOST_UNREACHABLE: 4, REFUSED: 5, COMMAND: 7, ADDRESS_TYPE: 8 } as const;

const reply = (code: number) => new Uint8Array([5, code, 0, 1, 0, 0, 0, 0, 0, 0]);

export interface Socks5Deps {
  nodeName: string;
  /** The ports of a node's address that may be reached (edgeTunnel.nodePorts; the receiving node checks them too). */
  nodePorts: readonly number[];
  catalog: () => CatalogSnapshot;
  logger: Logger;
}

/** Where the handshake is, per connection (kept on the socket, so connections never share parsing state). */
interface HandshakeState {
  greeted: boolean;
}

export function socks5Route(deps: Socks5Deps): RouteHook {
  const states = new WeakMap<object, HandshakeState>();
  const refuse = (client: { write(b: Uint8Array): number }, code: number, why: string): null => {
    client.write(reply(code));
    deps.logger.info('SOCKS5 request refused', { reason: why });
    return null;
  };
  return {
    timeoutMs: 10_000,
    decide(client, b) {
      let st = states.get(client);
      if (!st) states.set(client, (st = { greeted: false }));
      let o = 0;
      if (!st.greeted) {
        if (b.length < 2) return 'more';
        if (b[0] !== 5) return null; // not SOCKS5: nothing sensible to answer
        const n = b[1]!;
        if (b.length < 2 + n) return 'more';
        if (!b.subarray(2, 2 + n).includes(0)) {
          client.write(new Uint8Array([5, 0xff])); // only "no authentication" is offered
          return null;
        }
        client.write(new Uint8Array([5, 0]));
        st.greeted = true;
      }
      o = 2 + b[1]!;
      if (b.length < o + 5) return 'more';
      if (b[o] !== 5) return null;
      const cmd = b[o + 1]!;
      const atyp = b[o + 3]!;
      let addrLen: number;
      if (atyp === 1) addrLen = 4;
      else if (atyp === 4) addrLen = 16;
      else if (atyp === 3) addrLen = 1 + b[o + 4]!;
      else return refuse(client, REP.ADDRESS_TYPE, `address type ${atyp}`);
      const end = o + 4 + addrLen + 2;
      if (b.length < end) return 'more';
      if (cmd !== 1) return refuse(client, REP.COMMAND, `command ${cmd} (only CONNECT)`);
      if (atyp !== 3) return refuse(client, REP.ADDRESS_TYPE, 'an IP address (only node names are reachable)');
      const name = new TextDecoder().decode(b.subarray(o + 5, o + 4 + addrLen)).toLowerCase();
      const port = (b[end - 2]! << 8) | b[end - 1]!;
      if (name === deps.nodeName) return refuse(client, REP.NOT_ALLOWED, `${name} is this node`);
      const node = deps.catalog().nodes.get(name);
      const ip = node?.addresses.find((a) => a.type === 'InternalIP')?.address ?? node?.addresses.find((a) => a.type === 'ExternalIP')?.address;
      if (!ip) return refuse(client, REP.HOST_UNREACHABLE, `no node named ${JSON.stringify(name)} with an address in the catalog`);
      if (!deps.nodePorts.includes(port)) return refuse(client, REP.NOT_ALLOWED, `port ${port} of node ${name} is not in modules.edgeTunnel.nodePorts [${deps.nodePorts.join(', ')}]`);
      const target: LbEndpoint = { key: `${ip}:${port}`, ip, port, nodeName: name, podName: '' };
      return { target, rest: b.subarray(end) };
    },
    connected(client) {
      client.write(reply(REP.OK));
    },
    failed(client) {
      client.write(reply(REP.REFUSED));
    },
  };
}
