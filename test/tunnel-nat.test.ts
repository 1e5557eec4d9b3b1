/**
 * The tunnel across NATs (needs root): two private LANs behind MASQUERADE routers and two public relays (see
 * fixtures/natlab.ts). A client in LAN A reaches a service whose endpoint is in LAN B through its cluster IP
 * (nftables interception on node ha).
 * - Hard NATs (RST to unsolicited packets): punching fails, the path stays relayed and carries HTTP, WebSocket and
 *   UDP; killing the relay in use moves new connections to the other relay within 5 s.
 * - Punchable NATs (drop unsolicited packets): the relayed connection is upgraded to a direct one by hole punching;
 *   new connections use it and the relays carry nothing more.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type TunnelLab as Lab, startTunnelLab as startLab } from './fixtures/natlab.ts';
import { isRoot, runCli, tempDir, waitFor } from './helpers.ts';

const tools = ['ip', 'iptables', 'nft', 'curl'].every((t) => Bun.which(t));
type Host = 'r1' | 'r2' | 'ha' | 'hb';

/** Bytes received on a relay's uplink (everything relayed crosses it twice). */
async function relayBytes(l: Lab): Promise<number> {
  let sum = 0;
  for (const h of ['r1', 'r2'] as const) sum += Number((await l.lab.exec(h, ['cat', '/sys/class/net/eth0/statistics/rx_bytes'])).stdout.trim());
  return sum;
}

describe.skipIf(!isRoot || !tools)('tunnel across hard NATs: relayed, with failover (root)', () => {
  let l: Lab;
  beforeAll(async () => {
    l = await startLab('reset');
  }, 90_000);
  afterAll(async () => {
    await l?.down();
  });

  test('HTTP through the cluster IP from LAN A to an endpoint in LAN B stays relayed: punching fails against RST', async () => {
    const t0 = performance.now();
    const body = await waitFor(async () => {
      const r = await l.curl();
      return r.code === 0 && r.stdout ? r.stdout : null;
    }, () => `curl through the tunnel\n--- ha ---\n${l.agents.get('ha')!.logs}\n--- hb ---\n${l.agents.get('hb')!.logs}`, 20_000, 300);
    console.log(`first response through a relay: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(body).toBe('hello from LAN B');
    // Give hole punching time to try (and fail) before checking the path.
    await Bun.sleep(3000);
    expect((await l.curl()).stdout).toBe('hello from LAN B');
    const peer = (await l.status('ha')).tunnel.peers.find((p) => p.node === 'hb');
    expect(peer?.path).toBe('relayed');
    expect(['r1', 'r2']).toContain(peer?.relay ?? '');
  }, 40_000);

  test('UDP and a WebSocket through the same path', async () => {
    const dir = tempDir();
    try {
      const udp = join(dir.path, 'udp.ts');
      writeFileSync(udp, `
const got = new Set(); const s = await Bun.udpSocket({ socket: { data(_s, b) { got.add(b.readUInt32BE(0)); }, error() {} } });
s.send(Buffer.alloc(4), 53, '10.96.5.2'); for (let i = 0; i < 50 && !got.size; i++) await Bun.sleep(100);
for (let i = 1; i <= 200; i++) { const d = Buffer.alloc(4 + (i % 900)); d.writeUInt32BE(i, 0); s.send(d, 53, '10.96.5.2'); if (i % 20 === 0) await Bun.sleep(5); }
await Bun.sleep(1500); console.log(JSON.stringify({ back: got.size - 1 })); s.close();
`);
      const u = await runCli([udp], { bin: [...l.lab.prefix('ha'), process.execPath] });
      expect(JSON.parse(u.stdout)).toEqual({ back: 200 });
      const ws = join(dir.path, 'ws.ts');
      writeFileSync(ws, `
const w = new WebSocket('ws://10.96.5.1/ws'); const echoes = [];
w.onmessage = (e) => echoes.push(String(e.data));
await new Promise((r, j) => { w.onopen = r; w.onerror = j; });
for (let i = 0; i < 5; i++) { w.send('m' + i); await Bun.sleep(400); }
w.close(); console.log(JSON.stringify(echoes));
`);
      const r = await runCli([ws], { bin: [...l.lab.prefix('ha'), process.execPath] });
      expect(JSON.parse(r.stdout)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    } finally {
      dir.cleanup();
    }
  }, 40_000);

  test('killing the relay in use moves new connections to the other relay within 5 s', async () => {
    expect((await l.curl()).stdout).toBe('hello from LAN B');
    const used = (await l.status('ha')).tunnel.peers.find((p) => p.node === 'hb')?.relay as Host;
    expect(['r1', 'r2']).toContain(used);
    const other: Host = used === 'r1' ? 'r2' : 'r1';
    const t0 = performance.now();
    await l.agents.get(used)!.stop('SIGKILL');
    await waitFor(async () => (await l.curl('/', 1)).stdout === 'hello from LAN B' || null, () => `recovery via ${other}\n${l.agents.get('ha')!.logs.slice(-3000)}`, 10_000, 100);
    const recoveredMs = performance.now() - t0;
    console.log(`relay ${used} killed; new connections through ${other} after ${recoveredMs.toFixed(0)} ms`);
    expect(recoveredMs).toBeLessThan(5000);
    const peer = (await l.status('ha')).tunnel.peers.find((p) => p.node === 'hb');
    expect(peer).toMatchObject({ path: 'relayed', relay: other });
  }, 40_000);
});

describe.skipIf(!isRoot || !tools)('tunnel across punchable NATs: hole punching (root)', () => {
  let l: Lab;
  beforeAll(async () => {
    l = await startLab('drop');
  }, 90_000);
  afterAll(async () => {
    await l?.down();
  });

  test('the relayed connection is upgraded to a direct one; new connections use it and the relays carry nothing', async () => {
    const t0 = performance.now();
    await waitFor(async () => (await l.curl()).stdout === 'hello from LAN B' || null, () => `first curl\n${l.agents.get('ha')!.logs}`, 20_000, 300);
    const first = performance.now() - t0;
    const peer = await waitFor(async () => {
      const p = (await l.status('ha')).tunnel.peers.find((x) => x.node === 'hb');
      return p?.path === 'direct' ? p : null;
    }, () => `a direct path to hb\n--- ha ---\n${l.agents.get('ha')!.logs.slice(-3000)}\n--- hb ---\n${l.agents.get('hb')!.logs.slice(-3000)}`, 10_000, 100);
    const punched = performance.now() - t0;
    console.log(`first response (relayed) after ${first.toFixed(0)} ms; direct path after ${punched.toFixed(0)} ms`);
    // The direct path goes to hb's router's public address (the NAT mapping), not through a relay.
    expect(peer.remoteAddr).toMatch(/^\/ip4\/10\.99\.0\.2\/tcp\/\d+\//);
    expect((await l.status('hb')).tunnel.punch.successes).toBeGreaterThanOrEqual(1);
    const before = await relayBytes(l);
    const r = await l.lab.exec('ha', ['curl', '-s', '-m', '10', '-o', '/dev/null', '-w', '%{size_download}', 'http://10.96.5.1/big']);
    expect(r.stdout).toBe(String(20 * 1024 * 1024));
    const relayed = (await relayBytes(l)) - before;
    console.log(`20 MB over the punched path; the relays received ${relayed} bytes meanwhile`);
    expect(relayed).toBeLessThan(1024 * 1024);
  }, 60_000);
});
