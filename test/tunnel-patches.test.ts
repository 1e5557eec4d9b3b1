/**
 * The tunnel's library patches (src/tunnel/patches/): the version table matches what package.json installs, and
 * each patch has a test that fails without it. Two of those live in tunnel-streams.test.ts with the stream
 * behaviour they protect: stream-resume ("a reader that pauses while resume() hands it the buffered bytes is not
 * flooded") and direct-receive ("a direct receiver gets every byte once and in order", which counts direct calls).
 */
import { afterEach, describe, expect, test } from 'bun:test';
import type { Libp2p, Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { TypedEventEmitter } from 'main-event';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { INSTALLED, PATCHES, applyLibraryPatches, versionCheck } from '../src/tunnel/patches/index.ts';
import { listenOnRunningNode, skipRepeatedProtocolMerges } from '../src/tunnel/patches/private-api.ts';
import { testNode } from './fixtures/libp2p-node.ts';
import { waitFor } from './helpers.ts';

const PROTOCOL = '/edgemesh-test/patches/1.0.0';
const nodes: Libp2p[] = [];
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.stop();
});

interface Frame {
  type: number;
}
interface MuxerInside {
  sendFrame(header: Frame, data?: unknown): boolean;
  log: { trace: ((...a: unknown[]) => void) & { enabled?: boolean } };
}
const muxerOf = (n: Libp2p, peer: Libp2p): MuxerInside => (n.getConnections(peer.peerId)[0] as unknown as { muxer: MuxerInside }).muxer;

/** Two connected nodes; b echoes nothing and reads everything on PROTOCOL. */
async function pair(): Promise<[Libp2p, Libp2p]> {
  const a = await testNode();
  const b = await testNode();
  nodes.push(a, b);
  await b.handle(PROTOCOL, (s: Stream) => {
    s.addEventListener('message', () => {});
  });
  await a.dial(b.getMultiaddrs()[0]!);
  await waitFor(() => b.getConnections(a.peerId).length > 0 || null, 'the connection on both sides', 5000);
  return [a, b];
}

/** 200 messages of 1 KiB from a to b on one stream, then wait until b has them all. */
async function smallMessages(a: Libp2p, b: Libp2p): Promise<void> {
  let got = 0;
  await b.unhandle(PROTOCOL);
  await b.handle(PROTOCOL, (s: Stream) => {
    s.addEventListener('message', (evt) => (got += evt.data.byteLength));
  });
  const s = await a.dialProtocol(b.peerId, PROTOCOL);
  for (let i = 0; i < 200; i++) {
    s.send(new Uint8Array(1024));
    await Bun.sleep(0);
  }
  await waitFor(() => got >= 200 * 1024 || null, 'the 200 messages', 5000);
}

describe('library patches', () => {
  test('the version table matches package.json and what is installed: moving a patched package fails here', () => {
    const pkg = JSON.parse(readFileSync(join(import.meta.dir, '..', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    for (const p of PATCHES) {
      expect({ patch: p.name, declared: pkg.dependencies[p.package] }).toEqual({ patch: p.name, declared: p.writtenFor });
      expect({ patch: p.name, installed: INSTALLED[p.package] }).toEqual({ patch: p.name, installed: p.writtenFor });
    }
    const report = applyLibraryPatches(createMemoryLogger('warn'));
    expect(report.filter((r) => !r.applied)).toEqual([]);
  });

  test('a different installed version is named in a warning; a patch that copies library code is then left out', () => {
    const copying = PATCHES.find((p) => p.copiesLibraryCode)!;
    const plain = PATCHES.find((p) => p.name === 'yamux-window')!;
    expect(versionCheck(copying, copying.writtenFor)).toEqual({ tryIt: true, warning: null });
    expect(versionCheck(copying, '7.9.0')).toEqual({
      tryIt: false,
      warning: `libp2p patch direct-receive: written for @libp2p/utils ${copying.writtenFor}, installed is 7.9.0; left out (it copies library code)`,
    });
    const other = versionCheck(plain, '8.1.0');
    expect(other.tryIt).toBe(true);
    expect(other.warning).toContain(`written for @libp2p/yamux ${plain.writtenFor}, installed is 8.1.0`);
  });

  test('quiet-events: an event nobody listens to is not built; a listened one still arrives', () => {
    applyLibraryPatches(createMemoryLogger('warn'));
    const Native = globalThis.CustomEvent;
    let built = 0;
    globalThis.CustomEvent = class extends Native<unknown> {
      constructor(type: string, init?: { detail?: unknown }) {
        super(type, init);
        built++;
      }
    } as typeof CustomEvent;
    try {
      const e = new TypedEventEmitter<{ idle: CustomEvent<number> }>();
      for (let i = 0; i < 100; i++) e.safeDispatchEvent('idle', { detail: i });
      expect(built).toBe(0); // without the patch: 100
      let heard = -1;
      e.addEventListener('idle', (evt) => (heard = evt.detail));
      e.safeDispatchEvent('idle', { detail: 7 });
      expect(heard).toBe(7);
    } finally {
      globalThis.CustomEvent = Native;
    }
  });

  test('yamux-window: 200 small frames get a window update only once half the window is used, not one each', async () => {
    applyLibraryPatches(createMemoryLogger('warn'));
    const [a, b] = await pair();
    const sent: number[] = [];
    const mb = muxerOf(b, a);
    const send = mb.sendFrame.bind(mb);
    mb.sendFrame = (h, d) => {
      sent.push(h.type);
      return send(h, d);
    };
    await smallMessages(a, b);
    const updates = sent.filter((t) => t === 1).length; // WINDOW_UPDATE
    expect(updates).toBeLessThan(10); // without the patch: one per data frame, ~200
  });

  test('yamux-frames: data frames are handled and sent without building their trace description', async () => {
    const log = createMemoryLogger('warn');
    applyLibraryPatches(log);
    const [a, b] = await pair();
    let traced = 0;
    const mb = muxerOf(b, a);
    const trace = Object.assign(() => {
      traced++;
    }, { enabled: false });
    mb.log.trace = trace;
    await smallMessages(a, b);
    expect(traced).toBeLessThan(10); // without the patch: one per frame received and sent, 200+
    expect(log.lines.join('\n')).not.toContain('yamux-frames');
  });

  test('private-api: a peer\'s protocol is written to the peer store once, not per stream; a running node listens on more addresses', async () => {
    const a = await testNode();
    const b = await testNode();
    nodes.push(a, b);
    await b.handle(PROTOCOL, (s: Stream) => {
      s.addEventListener('message', () => {});
    });
    const store = a.peerStore as unknown as { merge(peer: unknown, data: Record<string, unknown>, o?: unknown): Promise<unknown> };
    const merge = store.merge.bind(store);
    let protocolWrites = 0;
    store.merge = (peer, data, o) => {
      if (Object.keys(data).length === 1 && Array.isArray(data.protocols)) protocolWrites++;
      return merge(peer, data, o);
    };
    expect(skipRepeatedProtocolMerges(a)).toBe(true);
    await a.dial(b.getMultiaddrs()[0]!);
    for (let i = 0; i < 20; i++) (await a.dialProtocol(b.peerId, PROTOCOL)).abort(new Error('done'));
    expect(protocolWrites).toBeLessThanOrEqual(2); // without the patch: one per stream, 20
    const before = a.getMultiaddrs().length;
    await listenOnRunningNode(a, [multiaddr('/ip4/127.0.0.2/tcp/0')]);
    expect(a.getMultiaddrs().map(String).some((m) => m.startsWith('/ip4/127.0.0.2/tcp/'))).toBe(true);
    expect(a.getMultiaddrs().length).toBe(before + 1);
  });
});
