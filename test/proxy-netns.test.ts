/**
 * ClusterIP interception end to end (needs root): a "node" namespace runs the agent and an HTTP backend; a "pod"
 * namespace reaches it over a veth. curl to the cluster IP from the node (OUTPUT) and from the pod (PREROUTING),
 * with the nftables and the iptables backend; after stop no rule is left; a restart does not duplicate rules.
 * Kernel forwarding: a service whose endpoints are two pods in a third namespace ("back") is DNATed by the
 * kernel straight to them, round robin, masqueraded for pods, and falls back to the listener when a
 * DestinationRule asks for a hash or when the node does not forward. UDP takes the kernel path too, and a client
 * that keeps sending from one port moves to another endpoint when its own leaves (conntrack entries deleted).
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, MAIN, isRoot, runCli, tempDir, waitFor } from './helpers.ts';

const NODE = `emnode${process.pid}`;
const POD = `empod${process.pid}`;
const BACK = `emback${process.pid}`;
const tools = ['ip', 'nft', 'iptables-save', 'curl', 'sysctl'].every((t) => Bun.which(t));
const ip = (args: string[]) => runCli(args, { bin: ['ip'] });
/** UDP takes the kernel path only where the conntrack tool can clean up after it (.ci/run installs it). */
const CONNTRACK = !!Bun.which('conntrack');

/** name, cluster IP, protocol, service port, backend port (the backends listen on the node's loopback). */
type Svc = [string, string, 'TCP' | 'UDP', number, number];
const BASE: Svc[] = [['web', '10.96.0.10', 'TCP', 80, 18080], ['echo', '10.96.0.20', 'UDP', 5353, 18053]];
const catalogYaml = (svcs: Svc[]) =>
  svcs.map(([name, clusterIP, protocol, port, target]) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec: { clusterIP: ${clusterIP}, ports: [{ name: p, port: ${port}, protocol: ${protocol} }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: ${name}, namespace: shop }
subsets: [{ addresses: [{ ip: 127.0.0.1 }], ports: [{ name: p, port: ${target}, protocol: ${protocol} }] }]
`).join('---\n');
const inNs = (ns: string, args: string[]) => runCli(args, { bin: ['ip', 'netns', 'exec', ns] });
/** A service whose two endpoints are pods on this node (n1), in the "back" namespace. */
const podPool = (name: string, clusterIP: string, portName: string, protocol: 'TCP' | 'UDP', port: number, target: number) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec: { clusterIP: ${clusterIP}, ports: [{ name: ${portName}, port: ${port}, protocol: ${protocol} }] }
---
apiVersion: v1
kind: Endpoints
metadata: { name: ${name}, namespace: shop }
subsets: [{ addresses: [{ ip: 10.201.0.2, nodeName: n1 }, { ip: 10.201.0.3, nodeName: n1 }], ports: [{ name: ${portName}, port: ${target}, protocol: ${protocol} }] }]
`;
const POOL = podPool('pool', '10.96.0.30', 'p', 'TCP', 80, 8080);
/** A UDP service on the same two pods (each answers with its name). */
const UPOOL = podPool('upool', '10.96.0.40', 'u', 'UDP', 53, 9053);
/** A pool's service with Kubernetes ClientIP session affinity. */
const withAffinity = (yaml: string) => yaml.replace(/spec: \{ clusterIP: ([\d.]+),/, 'spec: { clusterIP: $1, sessionAffinity: ClientIP, sessionAffinityConfig: { clientIP: { timeoutSeconds: 300 } },');
const AFFINE = withAffinity(POOL);
const HASHED = `---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: pool, namespace: shop }
spec: { host: pool, trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: x-user } } } }
`;

describe.skipIf(!isRoot || !tools)('proxy interception in network namespaces (root)', () => {
  const t = tempDir();
  let backend: AgentProcess;
  let backPods: AgentProcess;
  const catalog = join(t.path, 'catalog.yaml');

  beforeAll(async () => {
    for (const ns of [NODE, POD, BACK]) {
      await ip(['netns', 'del', ns]);
      expect((await ip(['netns', 'add', ns])).code).toBe(0);
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    await ip(['link', 'add', `v${process.pid}n`, 'netns', NODE, 'type', 'veth', 'peer', 'name', `v${process.pid}p`, 'netns', POD]);
    await ip(['-n', NODE, 'addr', 'add', '10.200.0.1/24', 'dev', `v${process.pid}n`]);
    await ip(['-n', POD, 'addr', 'add', '10.200.0.2/24', 'dev', `v${process.pid}p`]);
    await ip(['-n', NODE, 'link', 'set', `v${process.pid}n`, 'up']);
    await ip(['-n', POD, 'link', 'set', `v${process.pid}p`, 'up']);
    await ip(['-n', POD, 'route', 'add', 'default', 'via', '10.200.0.1']);
    // Nodes have a default route; locally generated packets to a cluster IP need one to reach the nat hook.
    await ip(['-n', NODE, 'route', 'add', 'default', 'via', '10.200.0.2']);
    // Two endpoint pods in "back", each answering with its name and the address it sees the client at.
    await ip(['link', 'add', `w${process.pid}n`, 'netns', NODE, 'type', 'veth', 'peer', 'name', `w${process.pid}b`, 'netns', BACK]);
    await ip(['-n', NODE, 'addr', 'add', '10.201.0.1/24', 'dev', `w${process.pid}n`]);
    for (const a of ['10.201.0.2/24', '10.201.0.3/24']) await ip(['-n', BACK, 'addr', 'add', a, 'dev', `w${process.pid}b`]);
    await ip(['-n', NODE, 'link', 'set', `w${process.pid}n`, 'up']);
    await ip(['-n', BACK, 'link', 'set', `w${process.pid}b`, 'up']);
    await ip(['-n', BACK, 'route', 'add', 'default', 'via', '10.201.0.1']);
    const pods = join(t.path, 'pods.ts');
    writeFileSync(pods, "for (const [host, name] of [['10.201.0.2', 'b2'], ['10.201.0.3', 'b3']]) {\n" +
      "  Bun.serve({ hostname: host, port: 8080, fetch: (req, srv) => new Response(`${name} ${srv.requestIP(req)?.address}`) });\n" +
      "  await Bun.udpSocket({ hostname: host, port: 9053, socket: { data(s, _b, port, addr) { s.send(name, port, addr); }, error() {} } });\n" +
      "}\nconsole.log('serving');\n");
    backPods = new AgentProcess([pods], { bin: ['ip', 'netns', 'exec', BACK, process.execPath] });
    await backPods.waitForLog(/serving/);
    // The backend: an HTTP server inside the node namespace, on its loopback.
    const server = join(t.path, 'server.ts');
    writeFileSync(server, "Bun.serve({ hostname: '127.0.0.1', port: 18080, fetch: () => new Response('hello from the backend') });\n" +
      "await Bun.udpSocket({ hostname: '127.0.0.1', port: 18053, socket: { data(s, b, port, addr) { s.send(b, port, addr); }, error() {} } });\nconsole.log('serving');\n");
    // A UDP client for the pod: 1,000 datagrams to a cluster IP; prints how many came back, intact, from that IP.
    writeFileSync(join(t.path, 'udp-client.ts'), `
const [host, port] = [process.argv[2], Number(process.argv[3])];
let ok = 0, wrongSource = 0;
const s = await Bun.udpSocket({ socket: { data(_s, b, p, a) { if (a !== host || p !== port) wrongSource++; else if (b.length === 8 + (b.readUInt32BE(0) % 1000)) ok++; }, error() {} } });
// One datagram first opens the session (as a real client's first query does): what arrives while the proxy is
// still opening its upstream socket is queued and flushed as one burst, which a loaded machine's kernel buffers drop.
const warm = Buffer.alloc(8); warm.writeUInt32BE(0, 0); s.send(warm, port, host);
for (let i = 0; i < 100 && ok === 0; i++) await Bun.sleep(20);
ok = 0;
// Paced at ~2,000 datagrams/s: every socket on the way (client, listener, upstream, echo server) has the default
// 208 KiB buffer, ~100 of these datagrams, so a process descheduled for longer than the pacing allows overflows
// one. At 10,000/s one loaded CI run lost 8 of 1,000; at 5,000/s another lost 76 (the machine was loaded enough
// to move a 1 GiB tunnel upload at half its usual speed).
for (let i = 0; i < 1000; i++) { const d = Buffer.alloc(8 + (i % 1000)); d.writeUInt32BE(i, 0); s.send(d, port, host); if (i % 10 === 9) await Bun.sleep(5); }
await Bun.sleep(500);
console.log(JSON.stringify({ ok, wrongSource }));
s.close();
`);
    // A UDP client that keeps one socket (one conntrack entry) and asks every 50 ms; prints who answered.
    writeFileSync(join(t.path, 'udp-sticky.ts'), `
const s = await Bun.udpSocket({ socket: { data(_s, b) { console.log('reply ' + Buffer.from(b).toString()); }, error() {} } });
for (;;) { s.send('ping', 53, '10.96.0.40'); await Bun.sleep(50); }
`);
    // One datagram from a new socket (a new conntrack entry each time); prints who answered.
    writeFileSync(join(t.path, 'udp-once.ts'), `
const s = await Bun.udpSocket({ socket: { data(_s, b) { console.log(Buffer.from(b).toString()); process.exit(0); }, error() {} } });
s.send('ping', 53, '10.96.0.40');
await Bun.sleep(2000);
console.log('no answer');
process.exit(0);
`);
    // New connections to the pool for `ms`, each bounded to 800 ms (a SYN lost to a missing rule is retried
    // after 1 s): prints how many answered and the slowest.
    // Runs until the file argv[2] exists (or argv[3] ms have passed), then prints what it saw.
    writeFileSync(join(t.path, 'churn-client.ts'), `
const stop = Bun.file(process.argv[2]!);
const until = Date.now() + Number(process.argv[3]);
let ok = 0, failed = 0, slowest = 0;
const errors: string[] = [];
while (Date.now() < until && !(await stop.exists())) {
  const t0 = performance.now();
  try {
    const r = await fetch('http://10.96.0.30/', { headers: { connection: 'close' }, signal: AbortSignal.timeout(800) });
    const body = await r.text();
    if (/^b[23] /.test(body)) ok++; else { failed++; errors.push(\`\${ok + failed}: \${r.status} \${body.slice(0, 40)}\`); }
  } catch (e) { failed++; errors.push(\`\${ok + failed} after \${Math.round(performance.now() - t0)} ms: \${String(e)}\`); }
  slowest = Math.max(slowest, performance.now() - t0);
}
console.log(JSON.stringify({ ok, failed, slowest: Math.round(slowest), errors }));
`);
    // A keep-alive client: one request, then (once the test says go) another on the same connection.
    writeFileSync(join(t.path, 'keepalive.ts'), `
const go = process.argv[2]!;
let got = '';
const sock = await Bun.connect({ hostname: '10.96.0.30', port: 80, socket: { data(_s, d) { got += Buffer.from(d).toString(); }, error() {} } });
const ask = async () => { got = ''; sock.write('GET / HTTP/1.1\\r\\nHost: pool\\r\\n\\r\\n'); for (let i = 0; i < 200 && !/\\r\\n\\r\\n[^ ]+ /.test(got); i++) await Bun.sleep(10); return got.split('\\r\\n\\r\\n')[1] ?? 'no answer'; };
console.log('first ' + await ask());
while (!(await Bun.file(go).exists())) await Bun.sleep(20);
console.log('second ' + await ask());
sock.end();
`);
    backend = new AgentProcess([server], { bin: ['ip', 'netns', 'exec', NODE, process.execPath] });
    await backend.waitForLog(/serving/);
    writeFileSync(catalog, catalogYaml(BASE));
  });

  afterAll(async () => {
    await backend?.stop();
    await backPods?.stop();
    for (const ns of [NODE, POD, BACK]) await ip(['netns', 'del', ns]);
    t.cleanup();
  });

  const startAgent = async (interception: string, kernelForwarding = true) => {
    const cfg = join(t.path, `agent-${interception}.yaml`);
    writeFileSync(cfg, `commonConfig: { stateDir: ${t.path}/state, adminAddress: "127.0.0.1:10559" }\ncatalog: { file: ${catalog} }\nmodules:\n  edgeDNS: { enable: false }\n  edgeProxy: { enable: true, interception: ${interception}, kernelForwarding: ${kernelForwarding} }\n`);
    const agent = new AgentProcess(['agent', '--config', cfg, '--node-name', 'n1'], { bin: ['ip', 'netns', 'exec', NODE, process.execPath, MAIN] });
    await agent.waitForLog(/proxy listening .*interception=/);
    return agent;
  };
  const curl = (ns: string) => inNs(ns, ['curl', '-s', '--max-time', '3', 'http://10.96.0.10/']);

  for (const backendName of ['nftables', 'iptables'] as const) {
    test(`${backendName}: curl to the cluster IP from the node and from a pod; clean stop; no duplicates on restart`, async () => {
      let agent = await startAgent(backendName);
      try {
        expect(agent.logs).toContain(`interception=${backendName === 'nftables' ? 'nftables' : 'iptables'}`);
        expect((await curl(NODE)).stdout).toBe('hello from the backend');
        expect((await curl(POD)).stdout).toBe('hello from the backend');
        const udp = await inNs(POD, [process.execPath, join(t.path, 'udp-client.ts'), '10.96.0.20', '5353']);
        expect(udp.stdout.trim()).toBe(JSON.stringify({ ok: 1000, wrongSource: 0 }));
        const rulesNow = async () => backendName === 'nftables'
          ? (await inNs(NODE, ['nft', 'list', 'ruleset'])).stdout.split('\n').filter((l) => l.includes('dnat to')).length
          : (await inNs(NODE, ['iptables-save', '-t', 'nat'])).stdout.split('\n').filter((l) => l.includes('EDGEMESH-PORTALS') && l.startsWith('-A')).length;
        const before = await rulesNow();
        expect(before).toBeGreaterThan(0);
        // Restart: the same rules, not twice as many.
        expect(await agent.stop()).toBe(0);
        expect(await rulesNow()).toBe(0);
        agent = await startAgent(backendName);
        expect(await rulesNow()).toBe(before);
        expect((await curl(POD)).stdout).toBe('hello from the backend');
        // A new service in the catalog gets its rule within a second.
        writeFileSync(catalog, catalogYaml([...BASE, ['api', '10.96.0.11', 'TCP', 80, 18080]]));
        await waitFor(async () => (await inNs(POD, ['curl', '-s', '--max-time', '1', 'http://10.96.0.11/'])).stdout === 'hello from the backend', 'new service reachable', 3000, 100);
      } finally {
        expect(await agent.stop()).toBe(0);
        writeFileSync(catalog, catalogYaml(BASE));
      }
      const leftovers = backendName === 'nftables' ? (await inNs(NODE, ['nft', 'list', 'tables'])).stdout : (await inNs(NODE, ['iptables-save', '-t', 'nat'])).stdout;
      expect(leftovers).not.toContain(backendName === 'nftables' ? 'edgemesh' : 'EDGEMESH');
    }, 60_000);
  }
  const ruleset = async (backendName: string) =>
    backendName === 'nftables' ? (await inNs(NODE, ['nft', 'list', 'ruleset'])).stdout : (await inNs(NODE, ['iptables-save'])).stdout;
  /** Who answers `n` requests to the pool's cluster IP from a namespace: name → count, and the source seen. */
  const spread = async (ns: string, n: number, header?: string) => {
    const counts: Record<string, number> = {};
    const seenFrom = new Set<string>();
    for (let i = 0; i < n; i++) {
      const r = await inNs(ns, ['curl', '-s', '--max-time', '3', ...(header ? ['-H', `x-user: ${header}`] : []), 'http://10.96.0.30/']);
      const [name, from] = r.stdout.split(' ');
      counts[name || `failed: ${r.stderr}`] = (counts[name || `failed: ${r.stderr}`] ?? 0) + 1;
      if (from) seenFrom.add(from);
    }
    return { counts, seenFrom: [...seenFrom] };
  };

  for (const backendName of ['nftables', 'iptables'] as const) {
    test(`${backendName}: kernel forwarding round robin from the node and pods; a hash policy or no ip_forward falls back to the listener`, async () => {
      const dnatToPods = (rules: string) => rules.includes(backendName === 'nftables' ? '10.201.0.2 . 8080' : '--to-destination 10.201.0.2:8080');
      /** Wait for the rules to satisfy `ok`; on a timeout, show them and the agent's log. */
      const rulesFor = (ok: (rules: string) => boolean, what: string) =>
        waitFor(async () => ok(await ruleset(backendName)), what, 3000, 100).catch(async (err) => {
          console.error(await ruleset(backendName), agent.logs);
          throw err;
        });
      writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL);
      await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
      let agent = await startAgent(backendName);
      try {
        await rulesFor((r) => dnatToPods(r), 'kernel rules for the pool');
        // Exact alternation: the kernel's round robin, per connection. Pods' connections arrive masqueraded (from
        // the node's address on the pods' link), so the endpoint's answers come back through the node.
        const fromPod = await spread(POD, 20);
        expect(fromPod.counts).toEqual({ b2: 10, b3: 10 });
        expect(fromPod.seenFrom).toEqual(['10.201.0.1']);
        expect((await spread(NODE, 10)).counts).toEqual({ b2: 5, b3: 5 });
        // An endpoint removed under an established connection: that connection keeps its endpoint (conntrack),
        // new ones go to the other endpoint only.
        const go = join(t.path, `go-${backendName}`);
        const client = new AgentProcess([join(t.path, 'keepalive.ts'), go], { bin: ['ip', 'netns', 'exec', POD, process.execPath] });
        try {
          await client.waitForLog(/first /);
          const first = /first (b\d)/.exec(client.logs)?.[1];
          expect(first).toMatch(/^b[23]$/);
          const keep = first === 'b2' ? '10.201.0.3' : '10.201.0.2';
          writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL.replace(/addresses: \[.*?\]\]?, ports/, `addresses: [{ ip: ${keep}, nodeName: n1 }], ports`));
          await rulesFor((r) => !r.includes(backendName === 'nftables' ? `${first === 'b2' ? '10.201.0.2' : '10.201.0.3'}` : `--to-destination ${first === 'b2' ? '10.201.0.2' : '10.201.0.3'}:8080`), 'the endpoint gone from the rules');
          writeFileSync(go, '');
          await client.waitForLog(/second /);
          expect(/second (b\d)/.exec(client.logs)?.[1]).toBe(first);
          expect(Object.keys((await spread(POD, 4)).counts)).toEqual([first === 'b2' ? 'b3' : 'b2']);
        } finally {
          await client.stop();
          writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL);
        }
        await rulesFor((r) => r.includes(backendName === 'nftables' ? '10.201.0.2 . 8080' : '--to-destination 10.201.0.2:8080') && r.includes(backendName === 'nftables' ? '10.201.0.3 . 8080' : '--to-destination 10.201.0.3:8080'), 'both endpoints back');
        // Reported: the path per service port, and the count in the metrics.
        const ports = JSON.parse((await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/debug/proxy'])).stdout) as { service: string; path: string }[];
        expect(Object.fromEntries(ports.map((p) => [p.service, p.path]))).toEqual({ 'shop/web:p': 'kernel from the node, proxy from pods', 'shop/echo:p': CONNTRACK ? 'kernel from the node, proxy from pods' : 'proxy', 'shop/pool:p': 'kernel' });
        expect((await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/metrics'])).stdout).toContain(`edgemesh_proxy_kernel_service_ports ${CONNTRACK ? 3 : 2}`);
        // The loopback endpoint of "web": kernel-forwarded from the node, through the listener for pods.
        expect((await curl(NODE)).stdout).toBe('hello from the backend');
        expect((await curl(POD)).stdout).toBe('hello from the backend');

        // A consistent-hash DestinationRule needs the proxy: the rules go back to the listener, and it sticks.
        writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL + HASHED);
        await rulesFor((r) => !dnatToPods(r), 'pool back on the listener');
        // iptables: the pool's own chain went with it, in the same restore (web's and echo's are left).
        if (backendName === 'iptables') expect((await ruleset(backendName)).split('\n').filter((l) => l.startsWith(':EDGEMESH-SVC-'))).toHaveLength(CONNTRACK ? 2 : 1);
        for (const user of ['alice', 'bob', 'carol']) expect(Object.keys((await spread(POD, 4, user)).counts)).toHaveLength(1);

        // Hashing by source address: nftables hashes it in the kernel (jhash into the ring's partitions, with a
        // fixed seed), iptables keeps it on the listener. Either way each client address sticks to one endpoint,
        // across rule rewrites, and several addresses spread over both endpoints.
        writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL + HASHED.replace('httpHeaderName: x-user', 'useSourceIp: true'));
        if (backendName === 'nftables') await rulesFor((r) => /jhash ip saddr mod 100 seed 0x[0-9a-f]{8} map/.test(r), 'the pool hashed in the kernel');
        else await rulesFor((r) => !dnatToPods(r), 'pool back on the listener');
        const pool = async () => (JSON.parse((await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/debug/proxy'])).stdout) as { service: string; path: string; policy: string }[]).find((p) => p.service === 'shop/pool:p');
        // With iptables the rules do not change (the header-hashing pool was on the listener already): wait for
        // the agent to report the new policy, or the first requests may still meet the old one.
        await waitFor(async () => ((await pool())?.policy === 'consistent-hash by source address' ? true : null), 'the source-address policy in force', 5000, 100);
        expect((await pool())?.path).toBe(backendName === 'nftables' ? 'kernel' : 'proxy');
        const clients = Array.from({ length: 8 }, (_, i) => `10.200.0.${20 + i}`);
        for (const a of clients) await ip(['-n', POD, 'addr', 'add', `${a}/24`, 'dev', `v${process.pid}p`]);
        const from = async (a: string) => {
          const names = new Set<string>();
          for (let i = 0; i < 3; i++) names.add((await inNs(POD, ['curl', '-s', '--max-time', '3', '--interface', a, 'http://10.96.0.30/'])).stdout.split(' ')[0]!);
          return [...names];
        };
        const before: string[] = [];
        for (const a of clients) {
          const names = await from(a);
          expect(`${a}: ${names.join(',')}`).toMatch(new RegExp(`^${a.replace(/\./g, '\\.')}: b[23]$`));
          before.push(names[0]!);
        }
        expect(new Set(before)).toEqual(new Set(['b2', 'b3']));
        writeFileSync(catalog, catalogYaml([...BASE, ['web2', '10.96.0.12', 'TCP', 80, 18080]]) + '---\n' + POOL + HASHED.replace('httpHeaderName: x-user', 'useSourceIp: true'));
        await rulesFor((r) => r.includes('10.96.0.12'), 'rules rewritten');
        for (const [i, a] of clients.entries()) expect(`${a}: ${(await from(a)).join(',')}`).toBe(`${a}: ${before[i]}`);
        for (const a of clients) await ip(['-n', POD, 'addr', 'del', `${a}/24`, 'dev', `v${process.pid}p`]);
        expect(await agent.stop()).toBe(0);

        // Without ip_forward, pods go through the listener (their packets could not be forwarded); the node does not.
        writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL);
        await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
        agent = await startAgent(backendName);
        await rulesFor((r) => dnatToPods(r), 'kernel rules for the node');
        const podLines = (await ruleset(backendName)).split('\n').filter((l) => l.includes('10.96.0.30') && (l.includes('services_pod') || l.includes('EDGEMESH-PORTALS-CONTAINER')));
        if (backendName === 'iptables') expect(podLines.join('\n')).not.toContain('EDGEMESH-SVC-');
        expect((await spread(POD, 4)).counts).toEqual({ b2: 2, b3: 2 });
        expect((await spread(NODE, 4)).counts).toEqual({ b2: 2, b3: 2 });
      } finally {
        expect(await agent.stop()).toBe(0);
        await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
        writeFileSync(catalog, catalogYaml(BASE));
      }
      const left = await ruleset(backendName);
      expect(left).not.toContain(backendName === 'nftables' ? 'edgemesh' : 'EDGEMESH');
    }, 60_000);
  }
  for (const backendName of ['nftables', 'iptables'] as const) {
    test(`${backendName}: ClientIP affinity on the kernel path: each client address keeps its endpoint, across rule rewrites`, async () => {
      expect(AFFINE).toContain('sessionAffinity: ClientIP');
      writeFileSync(catalog, catalogYaml(BASE) + '---\n' + AFFINE);
      await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
      const agent = await startAgent(backendName);
      try {
        await waitFor(async () => (await ruleset(backendName)).includes(backendName === 'nftables' ? 'dnat to 10.201.0.3:8080' : '--to-destination 10.201.0.3:8080'), 'kernel rules for the pool', 3000, 100);
        // The pod (10.200.0.2) and the node (10.200.0.1) are two clients: round robin gives them one endpoint
        // each, and every later connection of each goes back to its own.
        const pod = Object.keys((await spread(POD, 8)).counts);
        const node = Object.keys((await spread(NODE, 8)).counts);
        expect(pod).toHaveLength(1);
        expect(node).toHaveLength(1);
        expect(pod[0]).not.toBe(node[0]);
        const ports = JSON.parse((await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/debug/proxy'])).stdout) as { service: string; path: string }[];
        expect(ports.find((p) => p.service === 'shop/pool:p')?.path).toBe('kernel');
        // Another service appears: the rules are written again, and what the kernel remembers survives it.
        writeFileSync(catalog, catalogYaml([...BASE, ['web2', '10.96.0.12', 'TCP', 80, 18080]]) + '---\n' + AFFINE);
        await waitFor(async () => (await ruleset(backendName)).includes('10.96.0.12'), 'rules rewritten', 3000, 100);
        // The node asks first now: with the kernel's memory lost, the new rules' round robin would start over and
        // send it to the pod's endpoint.
        expect(Object.keys((await spread(NODE, 6)).counts)).toEqual(node);
        expect(Object.keys((await spread(POD, 6)).counts)).toEqual(pod);
      } finally {
        expect(await agent.stop()).toBe(0);
        await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
        writeFileSync(catalog, catalogYaml(BASE));
      }
      expect(await ruleset(backendName)).not.toContain(backendName === 'nftables' ? 'edgemesh' : 'EDGEMESH');
    }, 60_000);
  }
  for (const backendName of ['nftables', 'iptables'] as const) {
    test.skipIf(!CONNTRACK)(`${backendName}: UDP on the kernel path; a client that keeps its port moves on when its endpoint leaves (needs conntrack)`, async () => {
      const udpOnce = async (ns: string) => (await inNs(ns, [process.execPath, join(t.path, 'udp-once.ts')])).stdout.trim();
      writeFileSync(catalog, catalogYaml(BASE) + '---\n' + UPOOL);
      await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
      const agent = await startAgent(backendName);
      const client = new AgentProcess([join(t.path, 'udp-sticky.ts')], { bin: ['ip', 'netns', 'exec', POD, process.execPath] });
      try {
        await waitFor(async () => (await ruleset(backendName)).includes(backendName === 'nftables' ? '10.201.0.3 . 9053' : '--to-destination 10.201.0.3:9053'), 'kernel rules for the UDP pool', 3000, 100);
        const ports = JSON.parse((await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/debug/proxy'])).stdout) as { service: string; path: string }[];
        expect(ports.find((p) => p.service === 'shop/upool:u')?.path).toBe('kernel');
        // Each new socket is a new flow: the kernel's round robin alternates, from pods and from the node.
        const fromPod: string[] = [];
        for (let i = 0; i < 4; i++) fromPod.push(await udpOnce(POD));
        expect(fromPod.sort()).toEqual(['b2', 'b2', 'b3', 'b3']);
        const fromNode: string[] = [];
        for (let i = 0; i < 4; i++) fromNode.push(await udpOnce(NODE));
        expect(fromNode.sort()).toEqual(['b2', 'b2', 'b3', 'b3']);
        // One socket: its conntrack entry keeps it on one endpoint.
        await client.waitForLog(/(reply b\d\n[^]*){5}/);
        const replies = () => [...client.logs.matchAll(/reply (b\d)/g)].map((m) => m[1]!);
        const first = replies()[0]!;
        expect(new Set(replies())).toEqual(new Set([first]));
        // Its endpoint leaves the catalog (the pod itself keeps running and answering): the same socket's next
        // datagrams go to the other endpoint. Without deleting the entry they would go to the old one for as long
        // as the client keeps sending.
        const other = first === 'b2' ? 'b3' : 'b2';
        const keep = other === 'b2' ? '10.201.0.2' : '10.201.0.3';
        writeFileSync(catalog, catalogYaml(BASE) + '---\n' + UPOOL.replace(/addresses: \[.*?\]\]?, ports/, `addresses: [{ ip: ${keep}, nodeName: n1 }], ports`));
        await waitFor(() => replies().at(-1) === other, `replies move to ${other}`, 5000, 50).catch((err) => {
          console.error(client.logs.split('\n').slice(-5).join('\n'), agent.logs);
          throw err;
        });
        const metrics = (await inNs(NODE, ['curl', '-s', 'http://127.0.0.1:10559/metrics'])).stdout;
        expect(Number(/^edgemesh_proxy_udp_conntrack_deleted_total (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
        // The service leaves the catalog: its entries go with its rules, so the client is answered no more (a
        // leftover entry would keep delivering to the endpoint).
        writeFileSync(catalog, catalogYaml(BASE));
        await waitFor(async () => !(await ruleset(backendName)).includes('10.96.0.40'), 'the UDP pool gone from the rules', 3000, 100);
        await waitFor(async () => {
          const n = replies().length;
          await Bun.sleep(500);
          return replies().length === n;
        }, 'no more answers for the removed service', 5000, 0);
        // With ClientIP affinity each client address keeps one endpoint across flows (new sockets each time).
        writeFileSync(catalog, catalogYaml(BASE) + '---\n' + withAffinity(UPOOL));
        await waitFor(async () => (await ruleset(backendName)).includes(backendName === 'nftables' ? 'dnat to 10.201.0.3:9053' : '--to-destination 10.201.0.3:9053'), 'affinity rules for the UDP pool', 3000, 100);
        const sticky: string[] = [];
        for (let i = 0; i < 4; i++) sticky.push(await udpOnce(POD));
        expect(new Set(sticky).size).toBe(1);
        expect(sticky[0]).toMatch(/^b[23]$/);
      } finally {
        await client.stop();
        expect(await agent.stop()).toBe(0);
        await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
        await inNs(NODE, ['conntrack', '-F']);
        writeFileSync(catalog, catalogYaml(BASE));
      }
      expect(await ruleset(backendName)).not.toContain(backendName === 'nftables' ? 'edgemesh' : 'EDGEMESH');
    }, 60_000);
  }
  for (const backendName of ['nftables', 'iptables'] as const) {
    test(`${backendName}: rule rewrites under traffic: 30 catalog changes while a pod opens connections, no SYN escapes the rules`, async () => {
      writeFileSync(catalog, catalogYaml(BASE) + '---\n' + POOL);
      await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
      const agent = await startAgent(backendName);
      try {
        await waitFor(async () => (await ruleset(backendName)).includes(backendName === 'nftables' ? '10.201.0.3 . 8080' : '--to-destination 10.201.0.3:8080'), 'kernel rules for the pool', 3000, 100);
        // Counters from here: a SYN that missed the DNAT would be routed back to the pod (the node's default route)
        // and counted there as an address error. That, not the request timings, is what tells a rule gap.
        const nstat = ['env', `NSTAT_HISTORY=${t.path}/nstat-${backendName}`, 'nstat'];
        await inNs(POD, [...nstat, '-n']);
        // And what they are: every packet reaching the pod for an address that is not its own, by destination,
        // protocol, port and TCP flags (a SYN there is a connection that missed the DNAT).
        const escapes = `escapes${backendName}`;
        writeFileSync(join(t.path, `${escapes}.nft`), `table inet ${escapes} {
  set seen { type ipv4_addr . inet_proto . inet_service . tcp_flag . inet_service; flags dynamic; counter; }
  chain pre {
    type filter hook prerouting priority -300;
    ip daddr != 10.200.0.2 meta l4proto tcp add @seen { ip daddr . meta l4proto . th dport . tcp flags . th sport }
    ip daddr != 10.200.0.2 meta l4proto != tcp add @seen { ip daddr . meta l4proto . 0 . 0x0 . 0 }
  }
}
`);
        expect((await inNs(POD, ['nft', '-f', join(t.path, `${escapes}.nft`)])).code).toBe(0);
        const stopFile = join(t.path, `churn-stop-${backendName}`);
        const client = inNs(POD, [process.execPath, join(t.path, 'churn-client.ts'), stopFile, '120000']);
        // Each change adds or removes a service: the whole rule set is written again (one transaction). All 30 are
        // waited for, however long a loaded machine takes; traffic runs throughout (and for at least 5 s).
        let changes = 0;
        const started = Date.now();
        for (; changes < 30; changes++) {
          const extra = changes % 2 === 0 ? [...BASE, ['churn', '10.96.0.99', 'TCP', 80, 18080] as Svc] : BASE;
          writeFileSync(catalog, catalogYaml(extra) + '---\n' + POOL);
          const want = changes % 2 === 0;
          await waitFor(async () => (await ruleset(backendName)).includes('10.96.0.99') === want, 'the change in the rules', 10_000, 20);
        }
        await Bun.sleep(Math.max(0, 5000 - (Date.now() - started)));
        writeFileSync(stopFile, '');
        const r = JSON.parse((await client).stdout) as { ok: number; failed: number; slowest: number; errors: string[] };
        const escaped = Number(/IpInAddrErrors\s+(\d+)/.exec((await inNs(POD, [...nstat, '-s', 'IpInAddrErrors'])).stdout)?.[1] ?? 0);
        expect(changes).toBe(30);
        expect(r.ok).toBeGreaterThan(100);
        // Measured: a rewrite split in two (a gap of a few ms) lets 7–9 SYNs escape per run; atomic rewrites
        // none in ~165,000 connections. This busy two-core machine stalls a request past 800 ms now and then
        // (no retransmit, no escape), so a few slow requests are tolerated; escapes are not.
        const seen = (await inNs(POD, ['nft', 'list', 'set', 'inet', escapes, 'seen'])).stdout;
        const elements = /elements = \{([^}]*)\}/.exec(seen)?.[1]?.trim() ?? '';
        // On failure, also what the node's conntrack holds for the pool's address: an entry whose reply comes from
        // the cluster IP itself was tracked without a DNAT.
        const tracked = escaped ? (await inNs(NODE, ['conntrack', '-L', '-p', 'tcp', '-d', '10.96.0.30'])).stdout.split('\n').filter((l) => / src=10\.96\.0\.30 /.test(l)).slice(0, 20).join('\n') : '';
        expect(escaped, `packets that reached the pod with another destination (address . protocol . port . TCP flags . source port):\n${elements}\nconntrack entries for 10.96.0.30 without a DNAT:\n${tracked}\nagent warnings:\n${agent.logs.split('\n').filter((l) => /WARN|ERROR/.test(l)).slice(-10).join('\n')}`).toBe(0);
        expect(elements).toBe('');
        expect(r.failed, r.errors.join('\n')).toBeLessThanOrEqual(3);
      } finally {
        expect(await agent.stop()).toBe(0);
        await inNs(NODE, ['sysctl', '-qw', 'net.ipv4.ip_forward=0']);
        // An escaped connection's entry (SYN_SENT, no DNAT) would live on for 120 s and catch the next test's
        // connections from the same source port: each backend's test starts from its own traffic only.
        await inNs(NODE, ['conntrack', '-F']);
        writeFileSync(catalog, catalogYaml(BASE));
      }
    }, 60_000);
  }
});
