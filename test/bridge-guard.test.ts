/**
 * The bridge guard (needs root: network namespaces the test creates and removes). A "node" namespace runs the
 * agent with DNS and SOCKS5 on the bridge IP 169.254.96.16; a "pod" namespace sits behind a bridge of the node;
 * a "lan" namespace is a LAN neighbour on the node's uplink (its default route) and routes 169.254.96.16 to the
 * node. Without the guard the neighbour got DNS answers and SOCKS5 service (Linux accepts a packet for any local
 * address on any interface). With it: the pod and the node are answered, the neighbour is not, the drops are
 * counted, and an interface that becomes an uplink later (a gateway route added) is guarded within 2 s.
 * Both backends: nftables, and iptables on a node without nft.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { networkInterfaces } from 'node:os';
import { gatewayInterfaces, uplinks } from '../src/net/guard.ts';
import { AgentProcess, MAIN, isRoot, runCli, tempDir } from './helpers.ts';

const P = process.pid;
const NODE = `bgnode${P}`, POD = `bgpod${P}`, LAN = `bglan${P}`, LAN2 = `bglan2${P}`;
const tools = ['ip', 'nft', 'iptables-restore', 'dig', 'curl'].every((t) => Bun.which(t));
const ip = (args: string[]) => runCli(args, { bin: ['ip'] });
const inNs = (ns: string, args: string[]) => runCli(args, { bin: ['ip', 'netns', 'exec', ns] });
const BRIDGE_IP = '169.254.96.16';

const CATALOG = `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ port: 80 }] }
`;

/** An A query to the bridge IP from `ns`: the answer's addresses, or null for no answer within 1 s. */
async function ask(ns: string, tcp = false): Promise<string | null> {
  const r = await inNs(ns, ['dig', '+short', '+time=1', '+tries=1', ...(tcp ? ['+tcp'] : []), `@${BRIDGE_IP}`, 'web.shop.svc.cluster.local']);
  return r.code === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

/** Whether a TCP connection to SOCKS5 on the bridge IP opens from `ns` (curl's exit 7 or 28: it did not). */
async function socksOpens(ns: string): Promise<boolean> {
  // A SOCKS5 CONNECT to a name the agent does not know: the handshake itself shows the listener answered.
  const r = await inNs(ns, ['curl', '-s', '-o', '/dev/null', '--connect-timeout', '1', '-m', '2', '--socks5-hostname', `${BRIDGE_IP}:10800`, 'http://nothing.invalid/']);
  return r.code !== 7 && r.code !== 28;
}

async function topology(): Promise<void> {
  for (const ns of [NODE, POD, LAN, LAN2]) {
    await ip(['netns', 'del', ns]);
    expect((await ip(['netns', 'add', ns])).code).toBe(0);
    await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
  }
  const link = async (a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string) => {
    expect((await ip(['link', 'add', aIf, 'netns', a, 'type', 'veth', 'peer', 'name', bIf, 'netns', b])).code).toBe(0);
    if (aAddr) await ip(['-n', a, 'addr', 'add', aAddr, 'dev', aIf]);
    await ip(['-n', b, 'addr', 'add', bAddr, 'dev', bIf]);
    await ip(['-n', a, 'link', 'set', aIf, 'up']);
    await ip(['-n', b, 'link', 'set', bIf, 'up']);
  };
  // The uplink: the node's default route goes through the LAN neighbour.
  await link(NODE, 'uplink0', '10.77.0.1/24', LAN, 'eth0', '10.77.0.2/24');
  await ip(['-n', NODE, 'route', 'add', 'default', 'via', '10.77.0.2']);
  await ip(['-n', LAN, 'route', 'add', `${BRIDGE_IP}/32`, 'via', '10.77.0.1']);
  // A pod on the node's pod bridge.
  await ip(['-n', NODE, 'link', 'add', 'pods0', 'type', 'bridge']);
  await ip(['-n', NODE, 'addr', 'add', '10.78.0.1/24', 'dev', 'pods0']);
  await ip(['-n', NODE, 'link', 'set', 'pods0', 'up']);
  await link(NODE, 'vpod0', '', POD, 'eth0', '10.78.0.5/24');
  await ip(['-n', NODE, 'link', 'set', 'vpod0', 'master', 'pods0']);
  await ip(['-n', POD, 'route', 'add', 'default', 'via', '10.78.0.1']);
  // A second LAN, not an uplink yet: no gateway route through it.
  await link(NODE, 'lan1', '10.79.0.1/24', LAN2, 'eth0', '10.79.0.2/24');
  await ip(['-n', LAN2, 'route', 'add', `${BRIDGE_IP}/32`, 'via', '10.79.0.1']);
}

for (const backend of ['nftables', 'iptables'] as const) {
  describe.skipIf(!isRoot || !tools)(`bridge guard, ${backend} (root)`, () => {
    const t = tempDir();
    let agent: AgentProcess;
    let admin = '';

    beforeAll(async () => {
      await topology();
      const catalog = join(t.path, 'catalog.yaml');
      writeFileSync(catalog, CATALOG);
      const port = 20000 + (P % 20000);
      admin = `127.0.0.1:${port}`;
      const cfg = join(t.path, 'agent.yaml');
      writeFileSync(cfg, `commonConfig: { stateDir: ${t.path}/state, adminAddress: "${admin}" }
catalog: { file: ${catalog} }
modules:
  edgeDNS: { enable: true }
  edgeProxy: { enable: true, interception: none, socks5Proxy: { enable: true, listenPort: 10800 } }
`);
      // A node without nft: a PATH that holds every tool the agent uses but nft.
      let env: Record<string, string> | undefined;
      if (backend === 'iptables') {
        const bin = join(t.path, 'bin');
        mkdirSync(bin);
        for (const tool of ['ip', 'iptables', 'iptables-save', 'iptables-restore', 'iptables-nft', 'iptables-nft-save', 'iptables-nft-restore', 'iptables-legacy', 'iptables-legacy-save', 'iptables-legacy-restore']) {
          const at = Bun.which(tool);
          if (at) symlinkSync(at, join(bin, tool));
        }
        env = { PATH: bin };
      }
      agent = new AgentProcess(['agent', '--config', cfg, '--node-name', 'n1'], { bin: ['ip', 'netns', 'exec', NODE, process.execPath, MAIN], env });
      await agent.waitForLog(/DNS listening address=169\.254\.96\.16:53/);
      await agent.waitForLog(new RegExp(`bridge guard on.*dropFrom=uplink0.*backend=${backend}`));
    }, 30_000);

    afterAll(async () => {
      await agent?.stop();
      for (const ns of [NODE, POD, LAN, LAN2]) await ip(['netns', 'del', ns]);
      t.cleanup();
    });

    test('a pod and the node itself are answered; the LAN neighbour gets nothing, and the drops are counted', async () => {
      expect(await ask(POD)).toBe('10.96.0.10');
      expect(await ask(POD, true)).toBe('10.96.0.10');
      expect(await ask(NODE)).toBe('10.96.0.10');
      expect(await socksOpens(POD)).toBe(true);
      // The neighbour on the uplink: UDP, TCP and SOCKS5 all go unanswered.
      expect(await ask(LAN)).toBeNull();
      expect(await ask(LAN, true)).toBeNull();
      expect(await socksOpens(LAN)).toBe(false);
      // Not yet an uplink: the second LAN is still answered (the guard drops only on uplinks).
      expect(await ask(LAN2)).toBe('10.96.0.10');
      const metrics = (await inNs(NODE, ['curl', '-s', `http://${admin}/metrics`])).stdout;
      expect(Number(/^edgemesh_bridge_guard_dropped_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(3);
      expect(metrics).toMatch(/^edgemesh_bridge_guard_interfaces 1$/m);
      const st = await inNs(NODE, [process.execPath, MAIN, 'status', '--admin', admin]);
      expect(st.stdout).toMatch(/guard:\s+169\.254\.96\.16 only for the node and its pods; dropping from uplink0 .*[1-9]\d* dropped/);
    }, 30_000);

    test('an interface that gets a gateway route is guarded within 2 s; the rule goes with the agent', async () => {
      await ip(['-n', NODE, 'route', 'add', '10.90.0.0/16', 'via', '10.79.0.2']);
      const t0 = performance.now();
      await agent.waitForLog(/bridge guard follows an interface change.*dropFrom="?lan1,uplink0/, 5000);
      expect(performance.now() - t0).toBeLessThan(2500);
      expect(await ask(LAN2)).toBeNull();
      expect(await ask(POD)).toBe('10.96.0.10');
      await agent.stop();
      const left = backend === 'nftables' ? (await inNs(NODE, ['nft', 'list', 'ruleset'])).stdout : (await inNs(NODE, ['iptables-save', '-t', 'raw'])).stdout;
      expect(left).not.toMatch(/edgemesh_guard|EDGEMESH-BRIDGE-GUARD/);
    }, 30_000);
  });
}

describe('bridge guard: which interfaces are uplinks', () => {
  const routes = `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
cni0\t0000F40A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
wg0\t00005A0A\t0200500A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0
`;
  test('gateway routes (RTF_GATEWAY) mark their interfaces; connected routes do not', () => {
    expect(gatewayInterfaces(routes).sort()).toEqual(['eth0', 'wg0']);
    expect(gatewayInterfaces('')).toEqual([]);
  });
  test("an interface holding the node's address is an uplink (alias labels by device); lo and the bridge never", () => {
    const ifs = { lo: [{ address: '127.0.0.1' }], 'eth1:1': [{ address: '192.168.7.9' }], edgemesh0: [{ address: '169.254.96.16' }] } as unknown as ReturnType<typeof networkInterfaces>;
    expect(uplinks({ procNetRoute: routes, interfaces: ifs, nodeAddresses: ['192.168.7.9', '127.0.0.1'], extra: ['wlan0', 'lo', 'edgemesh0'], bridgeDevice: 'edgemesh0' })).toEqual(['eth0', 'eth1', 'wg0', 'wlan0']);
  });
});
