/** Which addresses the tunnel listens on and will dial: loopback only when asked for by name. */
import { describe, expect, test } from 'bun:test';
import type { NetworkInterfaceInfo } from 'node:os';
import { defaultConfig } from '../src/config/load.ts';
import { isLoopbackAddr, listenAddresses } from '../src/tunnel/node.ts';

const iface = (address: string, internal: boolean): NetworkInterfaceInfo =>
  ({ address, netmask: '255.0.0.0', family: 'IPv4', mac: '00:00:00:00:00:00', internal, cidr: `${address}/8` }) as NetworkInterfaceInfo;

describe('tunnel addresses', () => {
  const ifaces = { lo: [iface('127.0.0.1', true)], eth0: [iface('192.168.7.20', false)], docker0: [iface('172.17.0.1', false)] };
  const cfg = (listenInterfaces: string) => ({ ...defaultConfig('agent', 'edge').modules.edgeTunnel, listenInterfaces, listenPort: 20006 });

  test('"*" listens on every interface but loopback (and the filtered ones); named interfaces, loopback included, as named', () => {
    expect(listenAddresses(cfg('*'), ifaces)).toEqual(['/ip4/192.168.7.20/tcp/20006']); // the code before: 127.0.0.1 too
    expect(listenAddresses(cfg('lo,eth0'), ifaces)).toEqual(['/ip4/127.0.0.1/tcp/20006', '/ip4/192.168.7.20/tcp/20006']);
    expect(() => listenAddresses(cfg('*'), { lo: [iface('127.0.0.1', true)] })).toThrow('selects no IPv4 address');
  });

  test('loopback multiaddrs are recognised, relayed ones through a loopback relay address included', () => {
    expect(isLoopbackAddr('/ip4/127.0.0.1/tcp/20006')).toBe(true);
    expect(isLoopbackAddr('/ip4/127.3.2.1/tcp/1/p2p/12D3KooWA9AvBpYt17yctznPFxDvR6NFXfyu8kY72jnVLC9SKUG4/p2p-circuit')).toBe(true);
    expect(isLoopbackAddr('/ip6/::1/tcp/20006')).toBe(true);
    expect(isLoopbackAddr('/ip4/192.168.7.20/tcp/20006')).toBe(false);
    expect(isLoopbackAddr('/ip4/10.127.0.1/tcp/20006')).toBe(false);
  });
});
