/**
 * The shipped artefacts: the compiled binary (host and arm64 under qemu-user), the systemd unit and install.sh.
 * Builds go to a temp dir so a developer's dist/ is left alone.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FakeApiServer } from './fixtures/apiserver.ts';
import { AgentProcess, ROOT, freePort, getJson, getText, runCli, tempDir, waitFor, writeAgentConfig } from './helpers.ts';

const QEMU = ['/usr/bin/qemu-aarch64-static', '/usr/bin/qemu-aarch64'].find((p) => existsSync(p));
const ARM64_LIBS = '/usr/aarch64-linux-gnu';
const SYSTEMD_ANALYZE = Bun.which('systemd-analyze');

const tmp = tempDir('edgemesh-build-');
const hostBin = join(tmp.path, 'edgemesh');
const armBin = join(tmp.path, 'edgemesh-linux-arm64');

async function build(args: string[]): Promise<void> {
  const r = await runCli(args, { bin: [process.execPath, join(ROOT, 'scripts/build.ts')] });
  if (r.code !== 0) throw new Error(`build failed: ${r.stderr}`);
}

beforeAll(async () => {
  await build([`--outfile=${hostBin}`]);
}, 120_000);

afterAll(() => tmp.cleanup());

/**
 * A compiled agent proxies a bulk download (listener, no interception) and hands it to its splice(2) worker:
 * the worker's entrypoint, bun:ffi and the epoll layout of the target all have to work inside the binary.
 */
async function bulkThroughBinary(bin: string[], size: number): Promise<void> {
  const t = tempDir();
  const body = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
  const web = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response(body) });
  try {
    const cat = join(t.path, 'c.yaml');
    writeFileSync(cat, `apiVersion: v1
kind: Service
metadata: {name: bulk, namespace: default}
spec: {clusterIP: 10.96.0.7, ports: [{name: http, port: 80, targetPort: ${web.port}}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bulk-1, namespace: default, labels: {kubernetes.io/service-name: bulk}}
addressType: IPv4
ports: [{name: http, port: ${web.port}, protocol: TCP}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
`);
    const cfg = await writeAgentConfig(t.path, 'modules: { edgeProxy: { enable: true, listenAddress: 127.0.0.1, interception: none } }');
    const agent = new AgentProcess(['agent', '--config', cfg.path, '--catalog', cat, '--node-name', 'n1'], { bin });
    try {
      await waitFor(async () => (await getText(`${cfg.admin}/readyz`)).status === 200, () => `readyz\n${agent.logs}`);
      const ports = await getJson<{ service: string; listenPort: number }[]>(`${cfg.admin}/debug/proxy`);
      const port = ports.find((p) => p.service === 'default/bulk:http')!.listenPort;
      // The first bulk connection starts the worker (and may end before it is up): download until one is spliced.
      let spliced = 0;
      for (let i = 0; i < 20 && spliced === 0; i++) {
        const got = new Uint8Array(await (await fetch(`http://127.0.0.1:${port}/`)).arrayBuffer());
        expect(Bun.hash(got)).toBe(Bun.hash(body));
        const metrics = (await getText(`${cfg.admin}/metrics`)).body;
        spliced = Number(/^edgemesh_proxy_spliced_connections_total (\d+)$/m.exec(metrics)?.[1]);
      }
      expect(spliced).toBeGreaterThanOrEqual(1);
      expect(agent.logs).toContain('splice worker started');
      expect(agent.logs).not.toContain('splice(2) bulk path not available');
    } finally {
      expect(await agent.stop()).toBe(0);
    }
  } finally {
    web.stop(true);
    t.cleanup();
  }
}

describe('compiled binary (host)', () => {
  test('version works', async () => {
    const r = await runCli(['version'], { bin: [hostBin] });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^edgemesh \d+\.\d+\.\d+ \(commit [0-9a-f]{7,}(-dirty)?, bun 1\.4\.\d+, linux\/x64\)/);
  });

  test('runs the agent from a catalog file and stops on SIGTERM', async () => {
    const t = tempDir();
    try {
      const cat = join(t.path, 'c.yaml');
      writeFileSync(cat, 'apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}\n');
      const cfg = await writeAgentConfig(t.path, '');
      const agent = new AgentProcess(['agent', '--config', cfg.path, '--catalog', cat, '--node-name', 'n1'], { bin: [hostBin] });
      await waitFor(async () => (await getText(`${cfg.admin}/readyz`)).status === 200, 'readyz');
      const c = await getJson<{ services: { name: string }[] }>(`${cfg.admin}/debug/catalog`);
      expect(c.services.map((s) => s.name)).toEqual(['web']);
      expect(await agent.stop()).toBe(0);
    } finally {
      t.cleanup();
    }
  });

  test('proxies a bulk download through the splice(2) worker inside the binary', () => bulkThroughBinary([hostBin], 32 * 1024 * 1024));

  test('runs the agent against a Kubernetes API (client-node inside the compiled binary)', async () => {
    const api = new FakeApiServer();
    const t = tempDir();
    await api.start();
    try {
      api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'kube-web', namespace: 'default' }, spec: { clusterIP: '10.96.0.8', ports: [{ port: 80 }] } });
      const cfg = await writeAgentConfig(t.path, `kubeAPIConfig: { master: ${api.url} }\n`);
      const agent = new AgentProcess(['agent', '--config', cfg.path, '--node-name', 'n1'], { bin: [hostBin] });
      try {
        await waitFor(async () => (await getText(`${cfg.admin}/readyz`)).status === 200, `readyz\n${agent.logs}`);
        api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'kube-two', namespace: 'default' }, spec: { clusterIP: '10.96.0.9', ports: [{ port: 80 }] } });
        await waitFor(async () => (await getJson<{ services: unknown[] }>(`${cfg.admin}/debug/catalog`)).services.length === 2, 'watch event');
      } finally {
        expect(await agent.stop()).toBe(0);
      }
    } finally {
      await api.stop();
      t.cleanup();
    }
  });
});

describe('compiled binary (host): tunnel', () => {
  test('two compiled agents carry HTTP through the tunnel (libp2p, FFI ciphers and TLS inside the binary)', async () => {
    const t = tempDir();
    const web = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('through the compiled tunnel') });
    const agents: AgentProcess[] = [];
    try {
      writeFileSync(join(t.path, 'psk'), 'binary-test-psk\n');
      const cat = join(t.path, 'catalog.yaml');
      writeFileSync(cat, '');
      const nodes = [];
      for (const name of ['a', 'b']) {
        const dir = join(t.path, name);
        mkdirSync(dir);
        const port = await freePort();
        const cfg = await writeAgentConfig(dir, `catalog: { file: ${cat} }\nmodules:\n  edgeProxy: { enable: true, listenAddress: 127.0.0.1, interception: none }\n  edgeTunnel: { enable: true, listenPort: ${port}, listenInterfaces: lo, mdns: false, directHostEndpoints: false, psk: { path: ${join(t.path, 'psk')} } }\n`);
        const id = await runCli(['identity', '--json', '--config', cfg.path, '--node-name', name], { bin: [hostBin] });
        nodes.push({ name, port, cfg, peerId: (JSON.parse(id.stdout) as { peerId: string }).peerId });
      }
      writeFileSync(cat, [
        ...nodes.map((n) => `apiVersion: v1\nkind: Node\nmetadata:\n  name: ${n.name}\n  annotations: { edgemesh.io/peer-id: ${n.peerId}, edgemesh.io/tunnel-addresses: /ip4/127.0.0.1/tcp/${n.port} }\n`),
        'apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\nspec: { clusterIP: 10.96.9.9, ports: [{ name: p, port: 80 }] }\n',
        `apiVersion: v1\nkind: Endpoints\nmetadata: { name: web, namespace: default }\nsubsets: [{ addresses: [{ ip: 127.0.0.1, nodeName: b }], ports: [{ name: p, port: ${web.port} }] }]\n`,
      ].join('---\n'));
      for (const n of nodes) agents.push(new AgentProcess(['agent', '--config', n.cfg.path, '--node-name', n.name], { bin: [hostBin] }));
      for (const [i, n] of nodes.entries()) await waitFor(async () => (await getText(`${n.cfg.admin}/readyz`)).status === 200, () => `readyz ${n.name}\n${agents[i]!.logs}`);
      const ports = await getJson<{ service: string; listenPort: number }[]>(`${nodes[0]!.cfg.admin}/debug/proxy`);
      const port = ports.find((p) => p.service === 'default/web:p')!.listenPort;
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe('through the compiled tunnel');
      expect(agents[0]!.logs).toContain('pnet/xsalsa20 (libsodium)');
    } finally {
      for (const a of agents) await a.stop();
      web.stop(true);
      t.cleanup();
    }
  }, 60_000);
});

describe('compiled binary (arm64)', () => {
  test.skipIf(!QEMU)('builds and prints its version under qemu-user', async () => {
    await build(['--target=bun-linux-arm64', `--outfile=${armBin}`]);
    if (!existsSync(ARM64_LIBS)) throw new Error(`${ARM64_LIBS} missing: install libc6-arm64-cross (.ci/run does)`);
    const r = await runCli(['version'], { bin: [QEMU!, '-L', ARM64_LIBS, armBin] });
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/bun 1\.4\.\d+, linux\/arm64\)/);
    expect(r.code).toBe(0);
  }, 120_000);
  test.skipIf(!QEMU)('proxies a bulk download through the splice(2) worker under qemu-user', () => bulkThroughBinary([QEMU!, '-L', ARM64_LIBS, armBin], 8 * 1024 * 1024), 60_000);
  test.skipIf(!QEMU)('runs every single-node scenario of edgemesh bench under qemu-user (correctness, not figures)', async () => {
    const r = await runCli(['bench', '--repeat', '1', '--duration', '0.1', '--json'], { bin: [QEMU!, '-L', ARM64_LIBS, armBin] });
    const rep = JSON.parse(r.stdout || '{"scenarios":[]}') as { node: { arch: string }; scenarios: { id: string; status: string; reason: string | null; metrics: { id: string; value: number }[] }[] };
    expect({ code: r.code, failed: rep.scenarios.filter((s) => s.status === 'failed').map((s) => `${s.id}: ${s.reason}`), stderr: r.code ? r.stderr : '' }).toEqual({ code: 0, failed: [], stderr: '' });
    expect(rep.node.arch).toBe('arm64');
    expect(rep.scenarios.map((s) => s.id)).toEqual(['catalog', 'dns', 'proxy', 'tunnel', 'ciphers']);
    for (const s of rep.scenarios) {
      // ciphers needs an arm64 libsodium, which the cross libraries do not have: skipped with its reason.
      if (s.status === 'skipped') expect({ id: s.id, reason: s.reason }).toEqual({ id: 'ciphers', reason: expect.stringContaining('libsodium') });
      else expect({ id: s.id, status: s.status }).toEqual({ id: s.id, status: 'ok' });
      for (const m of s.metrics) expect({ id: m.id, positive: m.value > 0 }).toEqual({ id: m.id, positive: true });
    }
  }, 120_000);
  if (!QEMU) test('arm64 (skipped: qemu-user-static is not installed; .ci/run installs it)', () => {});
});

describe('systemd unit and install.sh', () => {
  test.skipIf(!SYSTEMD_ANALYZE)('systemd-analyze verify reports nothing', async () => {
    const t = tempDir();
    try {
      // verify checks that ExecStart exists: point it at the binary just built, the unit is otherwise as shipped.
      const unit = readFileSync(join(ROOT, 'scripts/edgemesh.service'), 'utf8').replaceAll('/usr/local/bin/edgemesh', hostBin);
      const path = join(t.path, 'edgemesh.service');
      writeFileSync(path, unit);
      const r = await runCli(['verify', path], { bin: [SYSTEMD_ANALYZE!] });
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const sec = await runCli(['security', '--offline=true', path], { bin: [SYSTEMD_ANALYZE!] });
      expect(sec.stdout).toMatch(/Overall exposure level for edgemesh\.service: [0-4]\.\d/);
      expect(unit).toContain('CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE');
      expect(unit).toContain('StateDirectory=edgemesh');
      expect(unit).toContain('Restart=on-failure');
      // commonConfig.nice's default, set by systemd: the unit's bounding set has no CAP_SYS_NICE for the agent to do it.
      expect(unit).toContain('Nice=-10');
      expect(unit).not.toContain('CAP_SYS_NICE');
    } finally {
      t.cleanup();
    }
  });

  test('install.sh is idempotent, keeps an edited config, and --uninstall removes what it installed', async () => {
    const t = tempDir();
    try {
      const env = { DESTDIR: t.path };
      const sh = (args: string[]) => runCli(args, { env, bin: ['sh', join(ROOT, 'scripts/install.sh')] });
      const first = await sh(['--binary', hostBin, '--mode', 'edge']);
      expect(first.code).toBe(0);
      const conf = join(t.path, 'etc/edgemesh/config/edgemesh-agent.yaml');
      for (const f of ['usr/local/bin/edgemesh', 'etc/systemd/system/edgemesh.service', 'etc/edgemesh/config/edgemesh-agent.yaml']) expect(existsSync(join(t.path, f))).toBe(true);
      expect((await runCli(['config', 'check', conf])).code).toBe(0);
      writeFileSync(conf, readFileSync(conf, 'utf8').replace('listenPort: 53', 'listenPort: 5353'));
      const second = await sh(['--binary', hostBin, '--mode', 'edge']);
      expect(second.code).toBe(0);
      expect(readFileSync(conf, 'utf8')).toContain('listenPort: 5353');
      expect((await runCli(['version'], { bin: [join(t.path, 'usr/local/bin/edgemesh')] })).code).toBe(0);
      const un = await sh(['--uninstall']);
      expect(un.code).toBe(0);
      expect(existsSync(join(t.path, 'usr/local/bin/edgemesh'))).toBe(false);
      expect(existsSync(join(t.path, 'etc/systemd/system/edgemesh.service'))).toBe(false);
      expect(existsSync(conf)).toBe(true);
      expect((await sh(['--uninstall', '--purge'])).code).toBe(0);
      expect(existsSync(conf)).toBe(false);
      const bad = await sh(['--binary', join(t.path, 'nope')]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain('npm run build');
      const novalue = await sh(['--binary']);
      expect([novalue.code, novalue.stderr.trim()]).toEqual([2, 'install.sh: --binary needs a value (try --help)']);
    } finally {
      t.cleanup();
    }
  });

  test('install.sh: --dry-run changes nothing; standalone (detected without KubeEdge) writes a config and a catalog that check; an arm64 image is staged on x64', async () => {
    const t = tempDir();
    try {
      const sh = (args: string[], root = t.path) => runCli(args, { env: { DESTDIR: root }, bin: ['sh', join(ROOT, 'scripts/install.sh')] });
      const dry = await sh(['--binary', hostBin, '--dry-run']);
      expect(dry.code).toBe(0);
      expect(dry.stdout).toContain('mode: standalone (no KubeEdge here');
      expect(dry.stdout).toContain(`+ cp ${hostBin} ${t.path}/usr/local/bin/edgemesh.new`);
      expect(dry.stdout).toContain(`--- would write ${t.path}/etc/edgemesh/config/edgemesh-agent.yaml (mode 0644):`);
      expect(dry.stdout).toContain('dry run: nothing was changed');
      expect(readdirSync(t.path)).toEqual([]);

      const std = await sh(['--binary', hostBin]);
      expect(std.code).toBe(0);
      const conf = join(t.path, 'etc/edgemesh/config/edgemesh-agent.yaml');
      expect(readFileSync(conf, 'utf8')).toContain('file: /etc/edgemesh/catalog.yaml');
      expect((await runCli(['config', 'check', conf])).code).toBe(0);
      const catalog = join(t.path, 'etc/edgemesh/catalog.yaml');
      // The example catalog is one the agent serves: DNS answers its service.
      const agent = new AgentProcess(['agent', '--catalog', catalog, '--node-name', 'n1'], { env: { HOME: t.path, XDG_STATE_HOME: '' } });
      try {
        await waitFor(async () => (await getText('http://127.0.0.1:10551/readyz').catch(() => null))?.status === 200, 'the agent on the staged catalog');
        expect((await getText('http://127.0.0.1:10551/debug/catalog')).body).toContain('"hello"');
      } finally {
        await agent.stop();
      }

      const manual = await sh(['--binary', hostBin, '--mode', 'manual', '--kubeconfig', '/etc/edgemesh/kubeconfig'], join(t.path, 'm'));
      expect(manual.code).toBe(0);
      expect(readFileSync(join(t.path, 'm/etc/edgemesh/config/edgemesh-agent.yaml'), 'utf8')).toContain('kubeConfig: /etc/edgemesh/kubeconfig');
      expect((await sh(['--mode', 'manual'], join(t.path, 'm'))).stderr).toContain('--mode manual needs --kubeconfig FILE');

      // An arm64 binary (built above under qemu, or an arm64 ELF header when qemu is missing) staged on x64.
      let arm = armBin;
      if (!existsSync(arm)) {
        arm = join(t.path, 'fake-arm64');
        const elf = new Uint8Array(64);
        elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
        elf[18] = 0xb7;
        writeFileSync(arm, elf, { mode: 0o755 });
      }
      const staged = await sh(['--binary', arm, '--arch', 'arm64', '--mode', 'edge'], join(t.path, 'a'));
      expect(staged.stderr).toBe('');
      expect(staged.code).toBe(0);
      expect(staged.stdout).toContain('installed (edge, arm64)');
      expect(readFileSync(join(t.path, 'a/usr/local/bin/edgemesh'))).toEqual(readFileSync(arm));
      expect(readFileSync(join(t.path, 'a/etc/edgemesh/config/edgemesh-agent.yaml'), 'utf8')).toContain('server: http://127.0.0.1:10550');
      const wrong = await sh(['--binary', arm, '--arch', 'amd64'], join(t.path, 'b'));
      expect([wrong.code, wrong.stderr.trim()]).toEqual([1, `install.sh: --arch amd64, but ${arm} is built for arm64`]);
    } finally {
      t.cleanup();
    }
  });
});
