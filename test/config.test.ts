import { describe, expect, test } from 'bun:test';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, defaultConfig, loadConfig, mergeConfig } from '../src/config/load.ts';
import { didYouMean } from '../src/config/schema.ts';
import type { AgentConfig } from '../src/config/schema-edgemesh.ts';
import { runCli, tempDir } from './helpers.ts';

// A config as the original's Helm chart / ConfigMap ships it, including runtime-only keys and odd casing.
const ORIGINAL_AGENT = `apiVersion: agent.edgemesh.config.kubeedge.io/v1alpha1
kind: EdgeMeshAgent
kubeAPIConfig:
  master: ""
  kubeConfig: ""
  metaServer:
    server: http://127.0.0.1:10550
    security:
      requireAuthorization: false
commonConfig:
  bridgeDeviceName: edgemesh0
  bridgeDeviceIP: 169.254.96.16
modules:
  edgeDNS:
    enable: true
    listenPort: 53
    cacheDNS:
      enable: false
      autoDetect: true
      upstreamServers: ["10.96.0.10", "10.96.0.11:53"]
      cacheTTL: 30
  edgeProxy:
    enable: true
    serviceFilterMode: FilterIfLabelExists
    socks5Proxy:
      enable: false
      listenPort: 10800
    loadBalancer:
      consistentHash:
        partitionCount: 100
        replicationFactor: 10
        load: 1.25
  edgeTunnel:
    enable: true
    listenPort: 20006
    transport: tcp
    rendezvous: EDGEMESH_PLAYGOUND
    relayNodes:
    - nodeName: k8s-master
      advertiseAddress:
      - 1.1.1.1
    enableIpfsLog: false
    maxCandidates: 5
    heartbeatPeriod: 120
    finderPeriod: 60
    psk:
      enable: true
      path: /etc/edgemesh/psk
    tunnelLimitConfig:
      enable: true
      tunnelBaseStreamIn: 10240
      tunnelBaseStreamOut: 10240
      TunnelPeerBaseStreamIn: 1024
      tunnelPeerBaseStreamOut: 1024
    listenInterfaces: "*"
    metricConfig:
      enable: false
      port: 9999
  edgeCNI:
    enable: false
    meshCIDRConfig:
      cloudCIDR: ["10.244.0.0/16"]
      edgeCIDR: ["10.245.0.0/16"]
`;

describe('config', () => {
  test('defaults match the original\'s and depend on the detected mode', () => {
    const edge = defaultConfig('agent', 'edge');
    expect(edge.modules.edgeDNS.enable).toBe(true);
    expect(edge.modules.edgeDNS.listenPort).toBe(53);
    expect(edge.modules.edgeTunnel.listenPort).toBe(20006);
    expect(edge.modules.edgeTunnel.maxCandidates).toBe(15);
    expect(edge.modules.edgeTunnel.rendezvous).toBe('EDGEMESH_PLAYGOUND');
    expect(edge.modules.edgeProxy.loadBalancer.consistentHash).toEqual({ partitionCount: 100, replicationFactor: 10, load: 1.25 });
    expect(edge.kubeAPIConfig.metaServer.server).toBe('http://127.0.0.1:10550');
    expect(edge.commonConfig.adminAddress).toBe('127.0.0.1:10551');
    expect(defaultConfig('agent', 'cloud').modules.edgeDNS.enable).toBe(false);
    expect(defaultConfig('gateway', 'edge').modules.edgeTunnel.listenPort).toBe(20007);
  });

  test('reads the original agent YAML unchanged, keys case-insensitively, lists replace', () => {
    const { config, issues } = mergeConfig('agent', 'edge', Bun.YAML.parse(ORIGINAL_AGENT));
    expect(issues).toEqual([]);
    expect(config.modules.edgeTunnel.tunnelLimitConfig.tunnelPeerBaseStreamIn).toBe(1024);
    expect(config.modules.edgeTunnel.maxCandidates).toBe(5);
    expect(config.modules.edgeTunnel.relayNodes).toEqual([{ nodeName: 'k8s-master', advertiseAddress: ['1.1.1.1'] }]);
    expect(config.modules.edgeDNS.cacheDNS.upstreamServers).toEqual(['10.96.0.10', '10.96.0.11:53']);
    const { config: c2 } = mergeConfig('agent', 'edge', { MODULES: { EDGEDNS: { ListenPort: 5353 } } });
    expect(c2.modules.edgeDNS.listenPort).toBe(5353);
    expect(c2.modules.edgeDNS.enable).toBe(true); // untouched sibling keeps its default
  });

  test('every problem is reported at once with key path, value and what is allowed', () => {
    const { issues } = mergeConfig('agent', 'edge', {
      modules: { edgeTunnel: { listenPort: 'abc', relayNodes: [{ nodeName: 'a', advertiseAddress: ['not-an-ip'] }] }, edgeDNS: { listenPrt: 53 } },
      commonConfig: { adminAddress: 'localhost' },
    });
    const lines = issues.map((i) => `${i.path}: ${i.message}`);
    expect(lines).toContain('modules.edgeTunnel.listenPort: "abc" is not a port (1-65535)');
    expect(lines).toContain('modules.edgeTunnel.relayNodes[0].advertiseAddress[0]: "not-an-ip" is not an IP address, IP:port or multiaddr');
    expect(lines).toContain('modules.edgeDNS.listenPrt: unknown key (did you mean "listenPort"?)');
    expect(lines.some((l) => l.startsWith('commonConfig.adminAddress: "localhost" is not an address of the form IP:PORT'))).toBe(true);
    expect(issues.length).toBe(4);
  });

  test('a number that misses says how: out of range, not whole, not a number', () => {
    const { issues } = mergeConfig('agent', 'edge', {
      modules: { edgeTunnel: { listenPort: 70000, handshakeTimeoutMs: 1.5, maxCandidates: -5 }, edgeProxy: { loadBalancer: { consistentHash: { load: 'high' } } } },
    });
    const lines = issues.map((i) => `${i.path}: ${i.message}`);
    expect(lines).toContain('modules.edgeTunnel.listenPort: 70000 is out of range: expected a port (1-65535)');
    expect(lines).toContain('modules.edgeTunnel.handshakeTimeoutMs: 1.5 is not a whole number: expected an integer (100-600000)');
    expect(lines).toContain('modules.edgeTunnel.maxCandidates: -5 is out of range: expected an integer (0-1000)');
    expect(lines).toContain('modules.edgeProxy.loadBalancer.consistentHash.load: "high" is not a number (1-100)');
    expect(issues.length).toBe(4);
  });

  test('psk.mode takes handshake or stream only; anything else names the key, the value and the choices', () => {
    expect(mergeConfig('agent', 'edge', { modules: { edgeTunnel: { psk: { mode: 'stream' } } } }).config.modules.edgeTunnel.psk.mode).toBe('stream');
    const lines = mergeConfig('agent', 'edge', { modules: { edgeTunnel: { psk: { mode: 'xsalsa' } } } }).issues.map((i) => `${i.path}: ${i.message}`);
    expect(lines).toEqual(['modules.edgeTunnel.psk.mode: "xsalsa" is not one of handshake, stream']);
  });

  test('the tunnel\'s hardening keys: garbage names the key, the value and what is allowed', () => {
    const ok = mergeConfig('agent', 'edge', { modules: { edgeTunnel: { nodePorts: [22, 2222], takeOverBinding: true, relayServer: { maxReservations: 16, circuitDurationSec: 3600, circuitDataMiB: 512 } } } });
    expect(ok.issues).toEqual([]);
    expect(ok.config.modules.edgeTunnel.nodePorts).toEqual([22, 2222]);
    const bad = mergeConfig('agent', 'edge', { modules: { edgeTunnel: { nodePorts: [0, 'ssh'], takeOverBinding: 'yes', relayServer: { maxReservations: -1, circuitDataMiB: 1.5 } } } });
    const paths = bad.issues.map((i) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['modules.edgeTunnel.nodePorts[0]', 'modules.edgeTunnel.nodePorts[1]', 'modules.edgeTunnel.takeOverBinding', 'modules.edgeTunnel.relayServer.maxReservations', 'modules.edgeTunnel.relayServer.circuitDataMiB']));
    for (const i of bad.issues) expect(i.message.length).toBeGreaterThan(5);
  });

  test('the bridge guard\'s and the gateway\'s keys: garbage names the key, the value and what is allowed', () => {
    const ok = mergeConfig('gateway', 'edge', { commonConfig: { bridgeGuard: 'off', bridgeGuardInterfaces: ['eth1', 'wlan0'] }, modules: { edgeGateway: { labels: { app: 'gw-east' }, maxRequestBodyMiB: 8, requestHeadTimeoutMs: 2000, idleTimeoutSec: 30, accessLog: true } } });
    expect(ok.issues).toEqual([]);
    expect(ok.config.modules.edgeGateway.labels).toEqual({ app: 'gw-east' }); // replaces the default label
    const bad = mergeConfig('gateway', 'edge', { commonConfig: { bridgeGuard: 'sometimes', bridgeGuardInterfaces: ['eth 1'] }, modules: { edgeGateway: { labels: ['app=x'], maxRequestBodyMiB: -1, requestHeadTimeoutMs: 5, idleTimeoutSec: 0 } } });
    const lines = bad.issues.map((i) => `${i.path}: ${i.message}`);
    expect(lines).toEqual(expect.arrayContaining([
      'commonConfig.bridgeGuard: "sometimes" is not one of auto, off',
      expect.stringContaining('commonConfig.bridgeGuardInterfaces[0]: "eth 1" is not a valid interface name'),
      'modules.edgeGateway.labels: a list is not a map of strings',
      expect.stringContaining('modules.edgeGateway.maxRequestBodyMiB: -1'),
      expect.stringContaining('modules.edgeGateway.requestHeadTimeoutMs: 5'),
      expect.stringContaining('modules.edgeGateway.idleTimeoutSec: 0'),
    ]));
    expect(mergeConfig('gateway', 'edge', { modules: { edgeGateway: { labels: { app: 7 } } } }).issues.map((i) => `${i.path}: ${i.message}`)).toEqual(['modules.edgeGateway.labels.app: 7 is not a string']);
  });

  test('commonConfig.nice: -10 by default, any of -20 to 19, anything else named', () => {
    expect(mergeConfig('agent', 'edge', {}).config.commonConfig.nice).toBe(-10);
    expect(mergeConfig('agent', 'edge', { commonConfig: { nice: 0 } }).issues).toEqual([]);
    for (const v of [40, -21, 1.5, 'high']) {
      const lines = mergeConfig('agent', 'edge', { commonConfig: { nice: v } }).issues.map((i) => `${i.path}: ${i.message}`);
      expect(lines).toEqual([expect.stringContaining(`commonConfig.nice: ${JSON.stringify(v)}`)]);
    }
  });

  test('did-you-mean finds near keys and stays quiet for far ones', () => {
    expect(didYouMean('relayNode', ['relayNodes', 'rendezvous'])).toBe('relayNodes');
    expect(didYouMean('zzzzzz', ['relayNodes', 'rendezvous'])).toBeUndefined();
  });

  test('mode: standalone with a catalog, manual with master/kubeConfig, cloud with KUBERNETES_PORT, edge otherwise', () => {
    const t = tempDir();
    try {
      const cat = join(t.path, 'catalog.yaml');
      writeFileSync(cat, '');
      const file = join(t.path, 'c.yaml');
      const none = join(t.path, 'none.yaml');
      writeFileSync(file, `commonConfig: { stateDir: ${t.path} }\n`);
      const base = { role: 'agent' as const, configPath: file, nodeName: 'n1', defaultPath: none };
      expect(loadConfig({ ...base, env: {} }).mode).toBe('edge');
      expect(loadConfig({ ...base, env: { KUBERNETES_PORT: 'tcp://10.96.0.1:443' } }).mode).toBe('cloud');
      expect(loadConfig({ ...base, env: {}, catalogFile: cat }).mode).toBe('standalone');
      writeFileSync(file, `kubeAPIConfig: { master: "http://127.0.0.1:1" }\n`);
      expect(loadConfig({ ...base, env: {} }).mode).toBe('manual');
      // No file at all: the embedded standalone default, loopback only, user-writable state.
      const emb = loadConfig({ role: 'agent', env: { HOME: t.path }, nodeName: 'n1', defaultPath: none });
      expect(emb.mode).toBe('standalone');
      expect(emb.embedded).toBe(true);
      expect(emb.stateDir.startsWith(t.path)).toBe(true);
      expect((emb.config as AgentConfig).modules.edgeDNS.listenAddress).toBe('127.0.0.1');
      expect((emb.config as AgentConfig).modules.edgeDNS.listenPort).toBe(10053);
      expect(emb.admin).toEqual({ host: '127.0.0.1', port: 10551 });
      expect((emb.config as AgentConfig).modules.edgeProxy).toMatchObject({ enable: true, listenAddress: '127.0.0.1', interception: 'none' });
    } finally {
      t.cleanup();
    }
  });

  test('node name: flag, then NODE_NAME, then hostname; invalid names are config errors', () => {
    const t = tempDir();
    try {
      const base = { role: 'agent' as const, defaultPath: join(t.path, 'none'), hostname: () => 'host-a' };
      expect(loadConfig({ ...base, env: { HOME: t.path } }).nodeName).toBe('host-a');
      expect(loadConfig({ ...base, env: { HOME: t.path, NODE_NAME: 'env-b' } }).nodeName).toBe('env-b');
      expect(loadConfig({ ...base, env: { HOME: t.path, NODE_NAME: 'env-b' }, nodeName: 'flag-c' }).nodeName).toBe('flag-c');
      expect(() => loadConfig({ ...base, env: { HOME: t.path }, nodeName: 'Bad_Name' })).toThrow(ConfigError);
    } finally {
      t.cleanup();
    }
  });

  test('`config check` on a file with three mistakes reports all three with key paths and exits 2', async () => {
    const t = tempDir();
    try {
      const f = join(t.path, 'bad.yaml');
      writeFileSync(f, 'modules:\n  edgeTunnel:\n    listenPort: "abc"\n    transport: udp\n  edgeProxy:\n    serviceFilterMode: Sometimes\n');
      const r = await runCli(['config', 'check', f]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('3 problems');
      expect(r.stderr).toContain('modules.edgeTunnel.listenPort: "abc" is not a port (1-65535)');
      expect(r.stderr).toContain('modules.edgeTunnel.transport: "udp" is not one of tcp, ws, quic');
      expect(r.stderr).toContain('modules.edgeProxy.serviceFilterMode: "Sometimes" is not one of FilterIfLabelExists, FilterIfLabelDoesNotExists');
      const good = join(t.path, 'good.yaml');
      writeFileSync(good, ORIGINAL_AGENT);
      const ok = await runCli(['config', 'check', good]);
      expect(ok.stdout).toContain('ok (agent config)');
      expect(ok.code).toBe(0);
      const syntax = join(t.path, 'syntax.yaml');
      writeFileSync(syntax, 'modules:\n  edgeDNS: [1, 2\n');
      const s = await runCli(['config', 'check', syntax]);
      expect(s.code).toBe(2);
      expect(s.stderr).toMatch(new RegExp(`${syntax}:\\d+:\\d+: YAML: `));
      // Value errors carry file:line:column too.
      expect(r.stderr).toContain(`${f}:3:17: modules.edgeTunnel.listenPort`);
      expect(r.stderr).toContain(`${f}:4:16: modules.edgeTunnel.transport`);
    } finally {
      t.cleanup();
    }
  });

  test("`config check` takes the original's ConfigMap (alone or among other documents), with lines in the file; a missing kubeconfig warns unless --strict", async () => {
    const t = tempDir();
    try {
      const body = ORIGINAL_AGENT.trimEnd().split('\n').map((l) => `    ${l}`).join('\n');
      const cm = join(t.path, 'edgemesh-agent-cm.yaml');
      writeFileSync(cm, `apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: edgemesh-agent, namespace: kubeedge }\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edgemesh-agent-cfg\n  namespace: kubeedge\ndata:\n  edgemesh-agent.yaml: |\n${body}\n`);
      const ok = await runCli(['config', 'check', cm]);
      expect(ok.stdout).toContain('read from ConfigMap kubeedge/edgemesh-agent-cfg, data key edgemesh-agent.yaml');
      expect(ok.stdout).toContain('ok (agent config)');
      expect(ok.code).toBe(0);
      // A planted error inside the ConfigMap is reported at its line in the file.
      const text = readFileSync(cm, 'utf8');
      const lines = text.split('\n');
      const at = lines.findIndex((l) => /^\s+modules:/.test(l));
      lines.splice(at + 1, 0, `${' '.repeat(lines[at]!.indexOf('m') + 2)}edgeDNSS: { enable: true }`);
      writeFileSync(cm, lines.join('\n'));
      const bad = await runCli(['config', 'check', cm]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain(`${cm}:${at + 2}:${lines[at]!.indexOf('m') + 3}: modules.edgeDNSS: unknown key (did you mean "edgeDNS"?)`);
      // A kubeconfig that is not on this machine: a warning for check, an error with --strict.
      const kc = join(t.path, 'kc.yaml');
      writeFileSync(kc, 'kubeAPIConfig:\n  kubeConfig: /nonexistent/kubeconfig\n');
      const warn = await runCli(['config', 'check', kc]);
      expect(warn.code).toBe(0);
      expect(warn.stderr).toContain(`warning: ${kc}:2:15: kubeAPIConfig.kubeConfig: "/nonexistent/kubeconfig" does not exist on this machine`);
      expect((await runCli(['config', 'check', '--strict', kc])).code).toBe(2);
      // Several documents and no config among them: said plainly.
      const many = join(t.path, 'many.yaml');
      writeFileSync(many, 'a: 1\n---\nb: 2\n');
      const m = await runCli(['config', 'check', many]);
      expect(m.code).toBe(2);
      expect(m.stderr).toContain('2 YAML documents, and not one config among them');
    } finally {
      t.cleanup();
    }
  });

  test('`config defaults` prints complete YAML that `config check` accepts', async () => {
    const t = tempDir();
    try {
      for (const args of [[], ['--gateway'], ['--standalone']]) {
        const r = await runCli(['config', 'defaults', ...args]);
        expect(r.code).toBe(0);
        const f = join(t.path, 'd.yaml');
        writeFileSync(f, r.stdout);
        const c = await runCli(['config', 'check', f, ...(args[0] === '--gateway' ? ['--gateway'] : [])]);
        expect(c.stderr).toBe('');
        expect(c.code).toBe(0);
      }
    } finally {
      t.cleanup();
    }
  });

  test('the agent exits 2 on a bad config before touching the network', async () => {
    const t = tempDir();
    try {
      const f = join(t.path, 'bad.yaml');
      writeFileSync(f, `commonConfig: { stateDir: ${t.path}/s, adminAddress: "127.0.0.1:notaport" }\n`);
      const r = await runCli(['agent', '--config', f, '--node-name', 'n1']);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('commonConfig.adminAddress');
      const missing = await runCli(['agent', '--config', join(t.path, 'nope.yaml')]);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toContain('no such file');
      const usage = await runCli(['agent', '--bogus']);
      expect(usage.code).toBe(2);
    } finally {
      t.cleanup();
    }
  });
});

describe('docs', () => {
  test('docs/config.md reference matches the schema (run `bun scripts/config-doc.ts --write`)', async () => {
    const { docPath, withGenerated } = await import('../scripts/config-doc.ts');
    const doc = await Bun.file(docPath()).text();
    expect(withGenerated(doc)).toBe(doc);
  });
});
