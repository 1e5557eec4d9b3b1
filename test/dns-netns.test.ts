/**
 * EdgeDNS as applications see it (needs root: a network namespace the test creates and removes).
 * Inside the namespace the agent listens on its default address, 169.254.96.16:53 on the edgemesh0 bridge it
 * creates, and /etc/netns/<ns>/resolv.conf points glibc at it with a Kubernetes search path, so `getent hosts`
 * resolves short names exactly as a pod would. That resolv.conf also names the agent itself as the only
 * upstream: the agent must skip it (no forwarding loop) and answer outside names with a quick failure.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, MAIN, isRoot, runCli, tempDir } from './helpers.ts';

const NS = `emdns${process.pid}`;
const haveIp = !!Bun.which('ip');

describe.skipIf(!isRoot || !haveIp)('EdgeDNS in a network namespace (root)', () => {
  const t = tempDir();
  let agent: AgentProcess;
  const inNs = (args: string[]) => runCli(args, { bin: ['ip', 'netns', 'exec', NS] });

  beforeAll(async () => {
    await runCli(['netns', 'del', NS], { bin: ['ip'] });
    expect((await runCli(['netns', 'add', NS], { bin: ['ip'] })).code).toBe(0);
    await runCli(['-n', NS, 'link', 'set', 'lo', 'up'], { bin: ['ip'] });
    mkdirSync(`/etc/netns/${NS}`, { recursive: true });
    writeFileSync(`/etc/netns/${NS}/resolv.conf`, 'nameserver 169.254.96.16\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:1\n');
    const catalog = join(t.path, 'catalog.yaml');
    writeFileSync(catalog, 'apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n');
    const cfg = join(t.path, 'agent.yaml');
    writeFileSync(cfg, `commonConfig: { stateDir: ${t.path}/state, adminAddress: "" }\ncatalog: { file: ${catalog} }\nmodules:\n  edgeDNS: { enable: true }\n`);
    agent = new AgentProcess(['agent', '--config', cfg, '--node-name', 'n1'], { bin: ['ip', 'netns', 'exec', NS, process.execPath, MAIN] });
    await agent.waitForLog(/DNS listening address=169\.254\.96\.16:53/);
  });

  afterAll(async () => {
    await agent?.stop();
    await runCli(['netns', 'del', NS], { bin: ['ip'] });
    rmSync(`/etc/netns/${NS}`, { recursive: true, force: true });
    t.cleanup();
  });

  test('the agent created edgemesh0 with 169.254.96.16', async () => {
    const r = await inNs(['ip', '-4', 'addr', 'show', 'dev', 'edgemesh0']);
    expect(r.stdout).toContain('169.254.96.16/32');
  });

  test('getent hosts resolves full and short names through the search path', async () => {
    for (const name of ['web.shop.svc.cluster.local', 'web.shop', 'web']) {
      const r = await inNs(['getent', 'ahostsv4', name]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('10.96.0.10');
    }
    expect((await inNs(['getent', 'ahostsv4', 'nope'])).code).not.toBe(0);
  });

  test('resolv.conf pointing back at the agent: skipped, no loop, a quick failure', async () => {
    const t0 = performance.now();
    const r = await inNs(['getent', 'ahostsv4', 'example.test']);
    expect(r.code).not.toBe(0);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(agent.logs).toContain('skipping resolv.conf nameservers that point at this agent');
    expect(agent.logs).toContain('no upstream DNS servers');
    expect(agent.proc.exitCode).toBeNull();
  });

  test.skipIf(!Bun.which('dig'))('dig over UDP and TCP', async () => {
    const udp = await inNs(['dig', '+short', '@169.254.96.16', 'web.shop.svc.cluster.local']);
    expect(udp.stdout.trim()).toBe('10.96.0.10');
    const tcp = await inNs(['dig', '+tcp', '+short', '@169.254.96.16', 'web.shop.svc.cluster.local']);
    expect(tcp.stdout.trim()).toBe('10.96.0.10');
  });
});
