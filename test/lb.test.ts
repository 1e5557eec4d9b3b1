import { describe, expect, test } from 'bun:test';
import type { IstioObject, Service } from '../src/catalog/model.ts';
import { Balancer, type LbEndpoint } from '../src/lb/balancer.ts';
import { parseDuration, parsePolicy, ruleFor } from '../src/lb/policy.ts';
import { BoundedLoadRing } from '../src/lb/ring.ts';

const RING = { partitionCount: 100, replicationFactor: 10, load: 1.25 };
const eps = (n: number): LbEndpoint[] => Array.from({ length: n }, (_, i) => ({ key: `10.0.0.${i + 1}:80`, ip: `10.0.0.${i + 1}`, port: 80, nodeName: `n${i}`, podName: `p${i}` }));
const count = (b: Balancer, n: number, ctx: (i: number) => Parameters<Balancer['pick']>[0]) => {
  const m = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const e = b.pick(ctx(i))!;
    m.set(e.key, (m.get(e.key) ?? 0) + 1);
  }
  return m;
};

describe('balancer', () => {
  test('round robin spreads 3,000 picks over 3 endpoints exactly evenly', () => {
    const b = new Balancer({ ring: RING });
    b.setEndpoints(eps(3));
    const m = count(b, 3000, () => ({ clientIP: '1.1.1.1' }));
    expect([...m.values()]).toEqual([1000, 1000, 1000]);
  });

  test('random spreads within ±5%; least request prefers idle endpoints', () => {
    const b = new Balancer({ ring: RING });
    b.setEndpoints(eps(3));
    b.setPolicy({ kind: 'random' }, { enabled: false, timeoutSec: 0 });
    for (const v of count(b, 30_000, () => ({ clientIP: 'x' })).values()) expect(Math.abs(v - 10_000)).toBeLessThan(500);
    b.setPolicy({ kind: 'least-request' }, { enabled: false, timeoutSec: 0 });
    const [a, c] = [b.endpoints()[0]!, b.endpoints()[2]!];
    b.acquire(a.key);
    b.acquire(a.key);
    b.acquire(c.key);
    const idle = b.endpoints()[1]!;
    expect(b.pick({ clientIP: 'x' })!.key).toBe(idle.key);
    b.acquire(idle.key);
    expect(b.pick({ clientIP: 'x' })!.key).not.toBe(a.key); // a has 2 active, the others 1
    b.release(a.key);
    b.release(a.key);
    expect(b.activeCount(a.key)).toBe(0);
  });

  test('consistent hash: the same key sticks, different keys spread, a missing key goes round robin', () => {
    const b = new Balancer({ ring: RING });
    b.setEndpoints(eps(5));
    b.setPolicy({ kind: 'consistent-hash', hash: { kind: 'header', name: 'user-agent' } }, { enabled: false, timeoutSec: 0 });
    const first = b.pick({ clientIP: 'x', hashKey: 'curl/8.0' })!.key;
    for (let i = 0; i < 100; i++) expect(b.pick({ clientIP: String(i), hashKey: 'curl/8.0' })!.key).toBe(first);
    const spread = count(b, 2000, (i) => ({ clientIP: 'x', hashKey: `agent-${i}` }));
    expect(spread.size).toBe(5);
    for (const v of spread.values()) expect(v).toBeGreaterThan(200); // bounded loads keep every endpoint in use
    expect(count(b, 500, () => ({ clientIP: 'x' })).size).toBe(5);
    // Source IP hashing uses the address only (the original hashed the port too).
    b.setPolicy({ kind: 'consistent-hash', hash: { kind: 'source-ip' } }, { enabled: false, timeoutSec: 0 });
    const ip = b.pick({ clientIP: '192.0.2.7' })!.key;
    for (let i = 0; i < 50; i++) expect(b.pick({ clientIP: '192.0.2.7' })!.key).toBe(ip);
  });

  test('a failed endpoint is excluded on retry; no endpoints gives null', () => {
    const b = new Balancer({ ring: RING });
    expect(b.pick({ clientIP: 'x' })).toBeNull();
    b.setEndpoints(eps(2));
    const first = b.pick({ clientIP: 'x' })!;
    const exclude = new Set([first.key]);
    for (let i = 0; i < 5; i++) expect(b.pick({ clientIP: 'x', exclude })!.key).not.toBe(first.key);
    expect(b.pick({ clientIP: 'x', exclude: new Set(b.endpoints().map((e) => e.key)) })).toBeNull();
  });

  test('ClientIP session affinity pins a client until the timeout; it overrides a DestinationRule policy', () => {
    let now = 0;
    const b = new Balancer({ ring: RING, now: () => now });
    b.setEndpoints(eps(3));
    b.setPolicy({ kind: 'round-robin' }, { enabled: true, timeoutSec: 60 });
    const a = b.pick({ clientIP: '10.1.1.1' })!.key;
    const other = b.pick({ clientIP: '10.1.1.2' })!.key;
    expect(other).not.toBe(a);
    for (let i = 0; i < 10; i++) expect(b.pick({ clientIP: '10.1.1.1' })!.key).toBe(a);
    now += 61_000;
    b.pick({ clientIP: '10.9.9.9' });
    const after = new Set(Array.from({ length: 3 }, () => { now += 61_000; return b.pick({ clientIP: '10.1.1.1' })!.key; }));
    expect(after.size).toBeGreaterThan(1);
    b.setPolicy({ kind: 'random' }, { enabled: true, timeoutSec: 60 });
    expect(b.conflict).toContain('conflicts');
    expect(b.effectivePolicy().kind).toBe('round-robin');
  });

  test('endpoint changes: reshuffle only on a real change; affinity to removed endpoints is dropped', () => {
    const b = new Balancer({ ring: RING });
    b.setEndpoints(eps(3));
    b.setPolicy({ kind: 'round-robin' }, { enabled: true, timeoutSec: 600 });
    const pinned = b.pick({ clientIP: 'c' })!;
    const order = b.endpoints().map((e) => e.key);
    b.setEndpoints([...eps(3)].reverse());
    expect(b.endpoints().map((e) => e.key)).toEqual(order);
    b.setEndpoints(eps(3).filter((e) => e.key !== pinned.key));
    expect(b.pick({ clientIP: 'c' })!.key).not.toBe(pinned.key);
  });
});

describe('ring', () => {
  test('deterministic, and more endpoints than partitions does not crash (the original panics)', () => {
    const r1 = new BoundedLoadRing(RING);
    const r2 = new BoundedLoadRing(RING);
    r1.setMembers(['a', 'b', 'c']);
    r2.setMembers(['c', 'a', 'b']);
    for (let i = 0; i < 100; i++) expect(r1.locate(`k${i}`)).toBe(r2.locate(`k${i}`)!);
    const small = new BoundedLoadRing({ partitionCount: 7, replicationFactor: 3, load: 1.25 });
    small.setMembers(Array.from({ length: 20 }, (_, i) => `m${i}`));
    expect(small.locate('x')).toBeDefined();
    expect(new BoundedLoadRing(RING).locate('x')).toBeUndefined();
  });

  test('removing one member moves only the keys it owned (mostly)', () => {
    const r = new BoundedLoadRing(RING);
    const members = Array.from({ length: 10 }, (_, i) => `10.0.0.${i}:80`);
    r.setMembers(members);
    const before = Array.from({ length: 1000 }, (_, i) => r.locate(`key-${i}`));
    r.setMembers(members.slice(1));
    const moved = before.filter((m, i) => m !== members[0] && r.locate(`key-${i}`) !== m).length;
    expect(moved).toBeLessThan(250); // bounded loads move some extra keys, far from all
  });
});

describe('DestinationRule policies', () => {
  const lb = (loadBalancer: unknown) => parsePolicy({ trafficPolicy: { loadBalancer } } as never);
  test('simple and consistentHash forms', () => {
    expect(lb({ simple: 'ROUND_ROBIN' }).policy).toEqual({ kind: 'round-robin' });
    expect(lb({ simple: 'RANDOM' }).policy).toEqual({ kind: 'random' });
    expect(lb({ simple: 'LEAST_REQUEST' }).policy).toEqual({ kind: 'least-request' });
    expect(lb({ simple: 'LEAST_CONN' }).policy).toEqual({ kind: 'least-request' });
    expect(lb({ simple: 'PASSTHROUGH' })).toEqual({ policy: { kind: 'round-robin' }, warning: 'simple: PASSTHROUGH is served as round robin' });
    expect(lb({ consistentHash: { httpHeaderName: 'User-Agent' } }).policy).toEqual({ kind: 'consistent-hash', hash: { kind: 'header', name: 'user-agent' } });
    expect(lb({ consistentHash: { httpCookie: { name: 'sid', ttl: '1h30m' } } }).policy).toEqual({ kind: 'consistent-hash', hash: { kind: 'cookie', name: 'sid', path: '/', ttlSeconds: 5400 } });
    expect(lb({ consistentHash: { useSourceIp: true } }).policy).toEqual({ kind: 'consistent-hash', hash: { kind: 'source-ip' } });
    expect(lb({ consistentHash: { httpQueryParameterName: 'user' } }).policy).toEqual({ kind: 'consistent-hash', hash: { kind: 'query', name: 'user' } });
  });

  test('missing, unsupported and malformed policies warn and fall back to round robin, never throw', () => {
    const bad: unknown[] = [undefined, null, 42, 'x', [], {}, { simple: 'WEIGHTED' }, { simple: 7 }, { consistentHash: 'x' }, { consistentHash: {} }, { consistentHash: { httpCookie: { ttl: 'soon' } } }, { consistentHash: { httpHeaderName: '' } }];
    for (const v of bad) {
      const r = lb(v);
      expect(r.policy).toEqual({ kind: 'round-robin' });
      expect(typeof r.warning).toBe('string');
    }
    expect(parsePolicy({}).warning).toContain('no trafficPolicy');
    expect(parsePolicy({ trafficPolicy: 'x' } as never).warning).toContain('not an object');
    expect(parseDuration('500ms')).toBe(0.5);
    expect(parseDuration('10x')).toBeNull();
  });

  test('binding: by metadata name in the service namespace (the original), else by spec.host', () => {
    const svc = { namespace: 'shop', name: 'web' } as Service;
    const dr = (namespace: string, name: string, host: string): IstioObject => ({ namespace, name, apiVersion: 'networking.istio.io/v1beta1', spec: { host } });
    expect(ruleFor(svc, [dr('shop', 'web', 'elsewhere')])?.name).toBe('web'); // bound by metadata name, spec.host ignored, as the original's random-LB example shows
    expect(ruleFor(svc, [dr('shop', 'r1', 'web')])?.name).toBe('r1');
    expect(ruleFor(svc, [dr('other', 'r2', 'web.shop')])?.name).toBe('r2');
    expect(ruleFor(svc, [dr('other', 'r3', 'web.shop.svc.cluster.local.')])?.name).toBe('r3');
    expect(ruleFor(svc, [dr('other', 'r4', 'web')])).toBeUndefined(); // a short host is relative to the rule's namespace
    expect(ruleFor(svc, [dr('shop', 'zz', 'web'), dr('shop', 'web', 'x'), dr('shop', 'aa', 'web')])?.name).toBe('web');
    expect(ruleFor(svc, [dr('shop', 'zz', 'web'), dr('shop', 'aa', 'web')])?.name).toBe('aa');
  });
});
