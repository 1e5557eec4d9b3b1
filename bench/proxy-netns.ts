#!/usr/bin/env bun
/**
 * ClusterIP traffic end to end, as a pod sees it (needs root): a "pod" namespace reaches servers in a "back"
 * namespace (another pod on the node) through a "node" namespace that runs the agent with its interception
 * rules. Same run, ratios to direct (pod → back, routed by the node with no NAT):
 *   kernel   the agent with kernel forwarding (the default for round-robin services whose endpoints are local)
 *   proxy    the agent with kernelForwarding: false (every byte through the agent's listener; connections past
 *            spliceBulkBytes move to its splice(2) worker)
 *   jsonly   the same with spliceBulkBytes: 0 (every byte through the JavaScript splice)
 *   haproxy  haproxy (mode tcp) in the node namespace, dialed at the node's address
 *   haproxynat  the same haproxy reached through the cluster IPs by an nft DNAT in the node namespace, as an
 *            intercepting proxy is: it then pays for conntrack and NAT on every packet, as the agent's listener
 *            does (plain "haproxy" runs with no netfilter hook in the node namespace at all)
 * iperf3 with 1 and 4 streams, wrk with keep-alive and with a new connection per request. The agent and haproxy
 * are pinned to CPU 0; iperf3, nginx and wrk to CPU 1 (the kernel's forwarding runs in softirq on the sender's
 * CPU). Each round runs every mode once; the medians of `--rounds` are printed.
 * Each mode reaches its own server ports: connections the node opens itself (proxy, haproxy) and pod connections
 * the kernel masquerades to the node's address share source addresses, and a reused 4-tuple that the server still
 * holds in TIME_WAIT from another mode is dropped by PAWS (the timestamps come from another clock): SYN
 * retransmits and a p99 of a second (seen with --nstat: SYN retransmits on the node, PAWS drops on the back).
 * Separate ports keep the modes independent.
 * Usage: sudo bun bench/proxy-netns.ts [--seconds=5] [--rounds=2] [--connections=50] [--pin=split|none]
 *          [--modes=kernel,proxy,jsonly,haproxy,haproxynat] (direct always runs; jsonly and haproxynat only when named)
 *          [--affinity]  the services have ClientIP session affinity
 *          [--source-hash]  the services have a DestinationRule hashing by source address (haproxy: balance source)
 *          [--least-request]  the services have a DestinationRule with simple: LEAST_REQUEST (haproxy: balance leastconn)
 *          [--header-hash]  the services have a DestinationRule hashing by the header x-user, which wrk sends (the
 *                        agent then reads each connection's first request head; haproxy: mode http, balance
 *                        hdr(x-user) for the HTTP runs, mode tcp for iperf3, which is not HTTP)
 *          [--splice-bytes=N]  the agent's spliceBulkBytes in mode proxy (default: the agent's default)
 *          [--udp]       also UDP: dnsperf from the pod to dnsmasq in "back" behind a UDP cluster IP (kernel
 *                        forwarding of UDP needs the conntrack tool; haproxy has no UDP)
 *          [--base=DIR]  also run the listener path of the agent in checkout DIR (mode "base"): A/B in the same run
 *          [--nstat]     print each namespace's TCP counters (retransmits, resets, PAWS, overflows) per new-connection run
 *          [--warmup=S]  seconds of unmeasured wrk before each HTTP run (default 1; 0 = none)
 *          [--perf]      perf record the agent/haproxy during the new-connection run; prints the top symbols
 *          [--syscalls]  strace the agent/haproxy during the new-connection run and print syscalls per connection
 *                        (strace slows it down many times: that run's figures are not comparable)
 *        (needs iperf3, wrk, nginx-light, haproxy, nftables, iproute2; strace for --syscalls, linux-perf for --perf)
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuSeconds, iperfClient, parseDnsperf, wrkRun, writeNginxConf, type WrkResult } from './tools.ts';
import { onExit, spawnChild } from './children.ts';

const arg = (k: string, d: number) => Number(process.argv.find((a) => a.startsWith(`--${k}=`))?.split('=')[1] ?? d);
const seconds = arg('seconds', 5);
const rounds = arg('rounds', 2);
const conns = arg('connections', 50);
/** `--pin=split` (default): agent and haproxy on CPU 0, iperf3/nginx/wrk on CPU 1. `--pin=none`: all float. */
const pin = process.argv.find((a) => a.startsWith('--pin='))?.split('=')[1] ?? 'split';
const nstat = process.argv.includes('--nstat');
const syscalls = process.argv.includes('--syscalls');
const perf = process.argv.includes('--perf');
/** Seconds of unmeasured wrk before each measured HTTP run. */
const warmup = arg('warmup', 1);
/** The services get `sessionAffinity: ClientIP` (the kernel path then keeps it in nft sets / iptables recent). */
const affinity = process.argv.includes('--affinity');
const sourceHash = process.argv.includes('--source-hash');
const headerHash = process.argv.includes('--header-hash');
const leastRequest = process.argv.includes('--least-request');
const wrkHeaders = headerHash ? ['X-User: bench-user-1'] : [];
const spliceBytes = process.argv.find((a) => a.startsWith('--splice-bytes='))?.split('=')[1];
const udp = process.argv.includes('--udp');
const allModes = ['direct', 'kernel', 'proxy', 'haproxy', 'base', 'jsonly', 'haproxynat'] as const;
type Mode = (typeof allModes)[number];
const only = process.argv.find((a) => a.startsWith('--modes='))?.split('=')[1]?.split(',');
/** Another checkout's agent (e.g. a `git worktree` of the previous commit), run as mode "base" for A/B in one run. */
const baseDir = process.argv.find((a) => a.startsWith('--base='))?.split('=')[1];
const modes = allModes.filter((m) => (m === 'base' ? !!baseDir : m === 'direct' || (only ? only.includes(m) : m !== 'jsonly' && m !== 'haproxynat')));
/** Each mode's own iperf3 and nginx ports on the back namespace (see the header: PAWS across modes). */
const backPorts = (m: Mode) => { const i = allModes.indexOf(m); return { iperf: 5201 + i, web: 8080 + i, dns: 5300 + i }; };
const log = (s: string) => process.stderr.write(s + '\n');
if (process.getuid?.() !== 0) { log('needs root (network namespaces)'); process.exit(1); }
for (const t of ['iperf3', 'wrk', 'nginx', 'haproxy', 'nft', 'ip', 'taskset', ...(udp ? ['dnsperf', 'dnsmasq'] : []), ...(syscalls ? ['strace'] : []), ...(perf ? ['perf'] : [])]) if (!Bun.which(t)) { log(`needs ${t}: apt-get install iperf3 wrk nginx-light haproxy nftables iproute2${udp ? ' dnsperf dnsmasq-base' : ''}${syscalls ? ' strace' : ''}${perf ? ' linux-perf' : ''}`); process.exit(1); }

const NODE = `bnode${process.pid}`, POD = `bpod${process.pid}`, BACK = `bback${process.pid}`;
const MAIN = join(import.meta.dir, '../src/cli/main.ts');
const sh = (cmd: string[]) => {
  const r = Bun.spawnSync(cmd, { stdout: 'pipe', stderr: 'pipe' });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr.toString()}`);
};
const inNs = (ns: string, cpu: string, cmd: string[]) => ['ip', 'netns', 'exec', ns, 'taskset', '-c', pin === 'none' ? '0,1' : cpu, ...cmd];
const clientCpu = pin === 'none' ? '0,1' : '1';
const spawn = (cmd: string[]) => spawnChild(cmd, { stdout: Bun.file('/dev/null'), stderr: Bun.file('/dev/null') });

const dir = mkdtempSync(join(tmpdir(), 'edgemesh-netnsbench-'));
chmodSync(dir, 0o755); // nginx workers run unprivileged
const procs: ReturnType<typeof Bun.spawn>[] = [];
// On Ctrl-C or SIGTERM the finally below does not run: the namespaces go with the processes (children.ts).
onExit(() => { for (const ns of [NODE, POD, BACK]) Bun.spawnSync(['ip', 'netns', 'del', ns], { stderr: 'ignore' }); rmSync(dir, { recursive: true, force: true }); });
try {
  for (const ns of [NODE, POD, BACK]) { sh(['ip', 'netns', 'add', ns]); sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']); }
  const link = (a: string, aIp: string, b: string, bIp: string, name: string) => {
    sh(['ip', 'link', 'add', `${name}a`, 'netns', a, 'type', 'veth', 'peer', 'name', `${name}b`, 'netns', b]);
    sh(['ip', '-n', a, 'addr', 'add', `${aIp}/24`, 'dev', `${name}a`]);
    sh(['ip', '-n', b, 'addr', 'add', `${bIp}/24`, 'dev', `${name}b`]);
    sh(['ip', '-n', a, 'link', 'set', `${name}a`, 'up']);
    sh(['ip', '-n', b, 'link', 'set', `${name}b`, 'up']);
  };
  link(NODE, '10.210.0.1', POD, '10.210.0.2', `bp${process.pid}`);
  link(NODE, '10.211.0.1', BACK, '10.211.0.2', `bb${process.pid}`);
  sh(['ip', '-n', POD, 'route', 'add', 'default', 'via', '10.210.0.1']);
  sh(['ip', '-n', BACK, 'route', 'add', 'default', 'via', '10.211.0.1']);
  sh(['ip', 'netns', 'exec', NODE, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  // wrk with a new connection per request leaves ~100k sockets in TIME_WAIT: let the pod reuse them.
  sh(['ip', 'netns', 'exec', POD, 'sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);

  const nginxConf = writeNginxConf(dir, allModes.map((m) => `10.211.0.2:${backPorts(m).web}`));
  procs.push(spawn(inNs(BACK, '1', ['nginx', '-c', nginxConf, '-p', dir])));
  writeFileSync(join(dir, 'haproxy.cfg'), 'global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n' +
    (sourceHash ? '  balance source\n' : leastRequest ? '  balance leastconn\n' : '') +
    `listen iperf\n  bind 10.210.0.1:15201\n  server s 10.211.0.2:${backPorts('haproxy').iperf}\nlisten web\n  bind 10.210.0.1:18080\n` + (headerHash ? '  mode http\n  timeout http-request 5s\n  balance hdr(x-user)\n' : '') + `  server s 10.211.0.2:${backPorts('haproxy').web}\n`);
  procs.push(spawn(inNs(NODE, '0', ['haproxy', '-f', join(dir, 'haproxy.cfg')])));
  const svc = (name: string, ip: string, port: number, target: number, proto = 'TCP') => `apiVersion: v1\nkind: Service\nmetadata: { name: ${name}, namespace: bench }\nspec: { clusterIP: ${ip},${affinity ? ' sessionAffinity: ClientIP,' : ''} ports: [{ name: p, port: ${port}, protocol: ${proto} }] }\n---\napiVersion: v1\nkind: Endpoints\nmetadata: { name: ${name}, namespace: bench }\nsubsets: [{ addresses: [{ ip: 10.211.0.2, nodeName: n1 }], ports: [{ name: p, port: ${target}, protocol: ${proto} }] }]\n` +
    (sourceHash || headerHash || leastRequest ? `---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: { name: ${name}, namespace: bench }\nspec: { host: ${name}, trafficPolicy: { loadBalancer: ${leastRequest ? '{ simple: LEAST_REQUEST }' : `{ consistentHash: { ${headerHash ? 'httpHeaderName: x-user' : 'useSourceIp: true'} } }`} } }\n` : '');
  if (udp) {
    // One dnsmasq per mode's port: it answers every name under bench.test itself.
    for (const m of allModes) procs.push(spawn(inNs(BACK, '1', ['dnsmasq', '--no-daemon', '--no-hosts', '--no-resolv', '--listen-address=10.211.0.2', '--bind-interfaces', `--port=${backPorts(m).dns}`, '--address=/bench.test/192.0.2.1', `--pid-file=${join(dir, `dnsmasq-${m}.pid`)}`])));
    writeFileSync(join(dir, 'dns.q'), Array.from({ length: 100 }, (_, i) => `q${i}.bench.test A`).join('\n') + '\n');
  }
  await Bun.sleep(500);

  /** The agent in the node namespace on CPU 0; resolves once its rules are in. */
  async function startAgent(mode: 'kernel' | 'proxy' | 'base' | 'jsonly') {
    const kernelForwarding = mode === 'kernel';
    const ports = backPorts(mode);
    writeFileSync(join(dir, `catalog-${mode}.yaml`), svc('iperf', '10.96.0.50', 5201, ports.iperf) + '---\n' + svc('web', '10.96.0.51', 80, ports.web) + (udp ? '---\n' + svc('dns', '10.96.0.52', 53, ports.dns, 'UDP') : ''));
    const cfg = join(dir, `agent-${mode}.yaml`);
    writeFileSync(cfg, `commonConfig: { stateDir: ${dir}/state-${mode}, adminAddress: "" }\ncatalog: { file: ${dir}/catalog-${mode}.yaml }\nmodules:\n  edgeDNS: { enable: false }\n  edgeProxy: { enable: true, interception: nftables, kernelForwarding: ${kernelForwarding}${mode === 'jsonly' ? ', spliceBulkBytes: 0' : mode === 'proxy' && spliceBytes ? `, spliceBulkBytes: ${Number(spliceBytes)}` : ''} }\n`);
    const logFile = join(dir, `agent-${mode}.log`);
    const main = mode === 'base' ? join(baseDir!, 'src/cli/main.ts') : MAIN;
    const p = spawnChild(inNs(NODE, '0', [process.execPath, main, 'agent', '--config', cfg, '--node-name', 'n1']), { stdout: Bun.file(logFile), stderr: Bun.file(logFile) });
    const started = Date.now();
    while (!/proxy listening/.test(await Bun.file(logFile).text().catch(() => ''))) {
      if (p.exitCode !== null || Date.now() - started > 15_000) throw new Error(`agent did not start: ${await Bun.file(logFile).text().catch(() => '')}`);
      await Bun.sleep(50);
    }
    await Bun.sleep(300);
    return p;
  }

  async function iperfOnce(mode: Mode, host: string, port: number, streams: number): Promise<number> {
    // haproxynat is the haproxy instance of mode haproxy, with its server ports.
    const srv = spawn(inNs(BACK, '1', ['iperf3', '-s', '-B', '10.211.0.2', '-p', String(backPorts(mode === 'haproxynat' ? 'haproxy' : mode).iperf), '-1']));
    await Bun.sleep(300);
    try {
      return await iperfClient(clientCpu, host, port, seconds, streams, ['ip', 'netns', 'exec', POD]);
    } finally {
      srv.kill();
      await srv.exited;
    }
  }
  async function iperf(mode: Mode, host: string, port: number, streams: number): Promise<number> {
    try {
      return await iperfOnce(mode, host, port, streams);
    } catch (err) {
      // iperf3's control connection sometimes dies at start on this loaded machine: one more try, said aloud.
      log(`  iperf3 failed (${String(err)}); retrying once`);
      return await iperfOnce(mode, host, port, streams);
    }
  }
  const nstatEnv = (ns: string) => ({ env: { ...process.env, NSTAT_HISTORY: join(dir, `nstat-${ns}`) } });
  const wrk = async (mode: Mode, url: string, close: boolean, pid?: number): Promise<WrkResult> => {
    // Unmeasured first (every mode alike): the agent's JIT compiles a path while it first runs it (JSC's compiler
    // thread took ~4% of the agent's CPU in a cold new-connection run), and a long-running agent is warm.
    if (warmup > 0) {
      await wrkRun(clientCpu, url, conns, warmup, close, ['ip', 'netns', 'exec', POD], wrkHeaders);
      if (close) await Bun.sleep(1000);
    }
    const diag = close && (nstat || (syscalls && pid));
    if (diag) for (const ns of [NODE, POD, BACK]) Bun.spawnSync(['ip', 'netns', 'exec', ns, 'nstat', '-n'], nstatEnv(ns));
    const trace = close && syscalls && pid ? spawnChild(['strace', '-c', '-f', '-p', String(pid), '-o', join(dir, 'strace.txt')], { stdout: 'ignore', stderr: 'ignore' }) : null;
    const rec = close && perf && pid ? spawnChild(['perf', 'record', '-q', '-g', '-p', String(pid), '-o', join(dir, `perf-${mode}.data`)], { stdout: 'ignore', stderr: 'ignore' }) : null;
    const r = await wrkRun(clientCpu, url, conns, seconds, close, ['ip', 'netns', 'exec', POD], wrkHeaders);
    if (rec) {
      rec.kill('SIGINT');
      await rec.exited;
      const report = (sort: string, limit: string) => Bun.spawnSync(['perf', 'report', '-q', '--no-children', '--sort', sort, '--percent-limit', limit, '-g', 'none', '-i', join(dir, `perf-${mode}.data`)], { stdout: 'pipe', stderr: 'pipe' }).stdout.toString().split('\n').filter((l) => l.trim());
      log(`  ${mode} perf (new connections), by thread and object:\n${report('comm,dso', '1').join('\n')}\n  by symbol:\n${report('dso,sym', '0.7').slice(0, 40).join('\n')}`);
    }
    if (trace) {
      trace.kill('SIGINT');
      await trace.exited;
      // strace -c's last line: "100.00  seconds  usecs/call  calls  errors  total".
      const total = (await Bun.file(join(dir, 'strace.txt')).text()).split('\n').find((l) => /\stotal$/.test(l))?.trim().split(/\s+/)[3];
      // Every connection through the agent is one accepted by it: count them from the kernel, not from wrk.
      const accepted = Number(/TcpPassiveOpens\s+(\d+)/.exec(Bun.spawnSync(['ip', 'netns', 'exec', NODE, 'nstat', '-s', 'TcpPassiveOpens'], nstatEnv(NODE)).stdout.toString())?.[1] ?? 0);
      log(`  ${mode}: ${total} syscalls for ${accepted} connections: ${(Number(total) / accepted).toFixed(1)} per connection (under strace)`);
    }
    if (nstat && close) {
      for (const ns of [NODE, POD, BACK]) {
        const out = Bun.spawnSync(['ip', 'netns', 'exec', ns, 'nstat', '-s'], nstatEnv(ns)).stdout.toString();
        const keep = out.split('\n').filter((l) => /Retrans|Rst|Reset|PAWS|Overflow|Drop|TW|Abort|Timeout/.test(l)).map((l) => l.trim().split(/\s+/).slice(0, 2).join(' '));
        log(`  ${mode} ${ns.replace(/\d+$/, '')}: ${keep.join(', ') || '(nothing)'}`);
      }
    }
    if (close) await Bun.sleep(2000); // let TIME_WAIT drain a little between modes
    return r;
  };

  type Dns = { qps: number; avgMs: number; lost: number; cpuPerKq?: number };
  type Row = { iperf1: number; iperf4: number; keepalive: WrkResult; close: WrkResult; cpuPerGbit?: number; cpuPerConn?: number; dns?: Dns };
  /** dnsperf from the pod (10 clients, 500 outstanding); the agent's CPU per 1,000 answered queries. */
  async function dnsperf(host: string, port: number, pid?: number): Promise<Dns> {
    const c0 = pid ? await cpuSeconds(pid) : 0;
    const r = Bun.spawnSync(['ip', 'netns', 'exec', POD, 'taskset', '-c', clientCpu, 'dnsperf', '-s', host, '-p', String(port), '-d', join(dir, 'dns.q'), '-l', String(seconds), '-c', '10', '-q', '500', '-t', '2'], { stdout: 'pipe', stderr: 'pipe' });
    const { qps, avgMs, lost } = parseDnsperf(r.stdout.toString(), r.stderr.toString());
    const cpuPerKq = pid ? (((await cpuSeconds(pid)) - c0) * 1e3 * 1e3) / (qps * seconds) : undefined;
    return { qps, avgMs, lost, cpuPerKq };
  }
  async function measure(mode: Mode, target: { iperf: [string, number]; web: string }, pid?: number): Promise<Row> {
    const c0 = pid ? await cpuSeconds(pid) : 0;
    const iperf1 = await iperf(mode, ...target.iperf, 1);
    const cpuPerGbit = pid ? ((await cpuSeconds(pid)) - c0) / (iperf1 * seconds) : undefined;
    const iperf4 = await iperf(mode, ...target.iperf, 4);
    const keepalive = await wrk(mode, target.web, false);
    const c1 = pid ? await cpuSeconds(pid) : 0;
    const close = await wrk(mode, target.web, true, pid);
    // CPU per proxied new connection: steadier than req/s on a noisy machine (another tenant's load slows the
    // agent and wrk alike, but costs the agent little extra CPU per connection).
    const cpuPerConn = pid && !syscalls ? (((await cpuSeconds(pid)) - c1) * 1e6) / (close.rps * seconds) : undefined;
    const dns = udp && mode !== 'haproxy' && mode !== 'haproxynat' ? await dnsperf(mode === 'direct' ? '10.211.0.2' : '10.96.0.52', mode === 'direct' ? backPorts('direct').dns : 53, pid) : undefined;
    return { iperf1, iperf4, keepalive, close, cpuPerGbit, cpuPerConn, dns };
  }

  const results: Record<Mode, Row[]> = { direct: [], kernel: [], proxy: [], haproxy: [], base: [], jsonly: [], haproxynat: [] };
  const viaCluster = { iperf: ['10.96.0.50', 5201] as [string, number], web: 'http://10.96.0.51/' };
  for (let round = 1; round <= rounds; round++) {
    for (const mode of modes) {
      log(`round ${round}/${rounds}: ${mode}…`);
      if (mode === 'direct') results.direct.push(await measure(mode, { iperf: ['10.211.0.2', backPorts('direct').iperf], web: `http://10.211.0.2:${backPorts('direct').web}/` }));
      else if (mode === 'haproxy') results.haproxy.push(await measure(mode, { iperf: ['10.210.0.1', 15201], web: 'http://10.210.0.1:18080/' }, procs[1]!.pid));
      else if (mode === 'haproxynat') {
        const nat = 'table ip benchnat {\n  chain pre {\n    type nat hook prerouting priority -100;\n    ip daddr 10.96.0.50 tcp dport 5201 dnat to 10.210.0.1:15201\n    ip daddr 10.96.0.51 tcp dport 80 dnat to 10.210.0.1:18080\n  }\n}\n';
        writeFileSync(join(dir, 'benchnat.nft'), nat);
        sh(['ip', 'netns', 'exec', NODE, 'nft', '-f', join(dir, 'benchnat.nft')]);
        try {
          results.haproxynat.push(await measure(mode, viaCluster, procs[1]!.pid));
        } finally {
          sh(['ip', 'netns', 'exec', NODE, 'nft', 'delete', 'table', 'ip', 'benchnat']);
        }
      }
      else {
        const agent = await startAgent(mode);
        try {
          results[mode].push(await measure(mode, viaCluster, agent.pid));
        } finally {
          agent.kill();
          await agent.exited;
        }
      }
    }
  }

  const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };
  const med = (mode: Mode) => {
    const r = results[mode];
    return {
      iperf1: median(r.map((x) => x.iperf1)), iperf4: median(r.map((x) => x.iperf4)),
      keepalive: { rps: median(r.map((x) => x.keepalive.rps)), p50: median(r.map((x) => x.keepalive.p50)), p99: median(r.map((x) => x.keepalive.p99)) },
      close: { rps: median(r.map((x) => x.close.rps)), p50: median(r.map((x) => x.close.p50)), p99: median(r.map((x) => x.close.p99)) },
      cpuPerGbit: r[0]?.cpuPerGbit === undefined ? undefined : median(r.map((x) => x.cpuPerGbit!)),
      cpuPerConn: r[0]?.cpuPerConn === undefined ? undefined : median(r.map((x) => x.cpuPerConn!)),
      dns: r[0]?.dns === undefined ? undefined : { qps: median(r.map((x) => x.dns!.qps)), avgMs: median(r.map((x) => x.dns!.avgMs)), lost: median(r.map((x) => x.dns!.lost)), cpuPerKq: r[0].dns.cpuPerKq === undefined ? undefined : median(r.map((x) => x.dns!.cpuPerKq!)) },
    };
  };
  const d = med('direct');
  const table = ['| mode | 1 stream | 4 streams | keep-alive HTTP | new-connection HTTP | CPU 0 cores per Gbit/s | CPU 0 µs per new connection |', '|---|---:|---:|---:|---:|---:|---:|'];
  for (const mode of modes) {
    const m = med(mode);
    const ratio = (v: number, base: number) => (mode === 'direct' ? '' : ` (**${(v / base).toFixed(2)}**)`);
    const http = (w: WrkResult, base: WrkResult) => `${w.rps.toFixed(0)} req/s${ratio(w.rps, base.rps)}, p50 ${w.p50.toFixed(2)} / p99 ${w.p99.toFixed(2)} ms`;
    table.push(`| ${mode} | ${m.iperf1.toFixed(2)} Gbit/s${ratio(m.iperf1, d.iperf1)} | ${m.iperf4.toFixed(2)}${ratio(m.iperf4, d.iperf4)} | ${http(m.keepalive, d.keepalive)} | ${http(m.close, d.close)} | ${m.cpuPerGbit === undefined ? '—' : m.cpuPerGbit.toFixed(3)} | ${m.cpuPerConn === undefined ? '—' : m.cpuPerConn.toFixed(0)} |`);
  }
  console.log(table.join('\n'));
  if (udp) {
    const dt = ['', '| mode | UDP (dnsperf through the cluster IP) | agent CPU ms per 1,000 queries |', '|---|---:|---:|'];
    for (const mode of modes) {
      const x = med(mode).dns;
      if (!x) continue;
      dt.push(`| ${mode} | ${x.qps.toFixed(0)} q/s${mode === 'direct' ? '' : ` (**${(x.qps / d.dns!.qps).toFixed(2)}**)`}, avg ${x.avgMs.toFixed(2)} ms, lost ${x.lost} | ${x.cpuPerKq === undefined ? '—' : x.cpuPerKq.toFixed(1)} |`);
    }
    console.log(dt.join('\n'));
  }
  log(JSON.stringify(results));
} finally {
  for (const p of procs) p.kill();
  await Promise.all(procs.map((p) => p.exited));
  for (const ns of [NODE, POD, BACK]) Bun.spawnSync(['ip', 'netns', 'del', ns]);
  rmSync(dir, { recursive: true, force: true });
}
