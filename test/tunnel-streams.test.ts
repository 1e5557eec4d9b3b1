/**
 * Two libp2p nodes in this process on our transport, TLS and yamux (as the agent builds them), over real loopback
 * TCP: the stream and connection behaviour the tunnel relies on, where the library or Bun gets it wrong.
 * - A stream paused again while resume() hands over its buffered bytes stays paused for yamux (stream-resume.ts).
 * - A connection busy for longer than its inactivity timeout stays up; an idle one is closed (Bun's socket
 *   timeout is a one-shot deadline, net/idle.ts).
 * - Small messages gathered per turn into one TLS write (tls.ts) keep their order among large ones, across
 *   streams, and are written before the connection closes.
 * - With libp2p's unheard events skipped (quiet-events.ts) and yamux frames handled without their trace
 *   description (yamux-frames.ts), listeners still get every event: a writer held back by a paused reader hears
 *   'drain' and 'idle', a once-listener fires once, a removed one never; the tests after it run patched too.
 * - A stream with a direct receiver (direct-receive.ts) delivers every byte once and in order, whether it comes
 *   by the direct call or, while the reader is paused, by the library's buffered 'message' path.
 */
import { afterEach, describe, expect, test } from 'bun:test';
import type { Libp2p, Stream } from '@libp2p/interface';
import { DecodeError, MsgType, decodeProxy, encodeProxy, framedConnect, lengthPrefixed, replyType } from '../src/tunnel/protocol.ts';
import { quietEvents } from '../src/tunnel/patches/quiet-events.ts';
import { pausedStaysPaused } from '../src/tunnel/patches/stream-resume.ts';
import { quietFrames, quietFramesApplied } from '../src/tunnel/patches/yamux-frames.ts';
import { directReceive, receiveDirectly } from '../src/tunnel/patches/direct-receive.ts';
import { WINDOW, testNode } from './fixtures/libp2p-node.ts';
import { waitFor } from './helpers.ts';

const PROTOCOL = '/edgemesh-test/bulk/1.0.0';
const node = testNode;

const nodes: Libp2p[] = [];
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.stop();
});

describe('tunnel streams and connections (in process, real TCP)', () => {
  test('a reader that pauses while resume() hands it the buffered bytes is not flooded: the stream survives 128 MiB', async () => {
    expect(pausedStaysPaused()).toBe(true);
    const [a, b] = [await node(), await node()];
    nodes.push(a, b);
    let received = 0;
    let maxBuffered = 0;
    let aborted: string | null = null;
    const got = Promise.withResolvers<void>();
    const TOTAL = 128 * 1024 * 1024;
    await b.handle(PROTOCOL, (s: Stream) => {
      s.maxReadBufferLength = WINDOW;
      const sample = setInterval(() => (maxBuffered = Math.max(maxBuffered, s.readBufferLength)), 1);
      s.addEventListener('close', (evt) => {
        clearInterval(sample);
        if (evt.error) aborted = String(evt.error);
        got.resolve();
      });
      // A reader whose socket is always full: it takes each batch, then pauses at once, and resumes 20 ms later.
      // Every resume hands it what arrived meanwhile, and it pauses again inside that hand-over.
      s.pause();
      s.addEventListener('message', (evt) => {
        received += evt.data.byteLength;
        s.pause();
        setTimeout(() => {
          if (s.readStatus === 'paused') s.resume();
        }, 20);
        if (received >= TOTAL) got.resolve();
      });
      setTimeout(() => s.resume(), 50);
    });
    const s = await a.dialProtocol(b.getMultiaddrs()[0]!, PROTOCOL);
    const chunk = new Uint8Array(256 * 1024);
    let sent = 0;
    while (sent < TOTAL && s.status === 'open') {
      if (!s.send(chunk)) {
        await new Promise((r) => {
          s.addEventListener('drain', r, { once: true });
          s.addEventListener('close', r, { once: true });
        });
      }
      sent += chunk.length;
    }
    await Promise.race([got.promise, Bun.sleep(30_000)]);
    // Without the fix b aborts the stream after some 10 MiB: yamux, no longer paused, grants window with every
    // frame while the reader stays paused, and the read buffer passes the limit (StreamBufferError).
    expect(aborted).toBeNull();
    expect(received).toBe(TOTAL);
    expect(maxBuffered).toBeLessThanOrEqual(WINDOW);
  }, 60_000);

  test('a connection busy for longer than its inactivity timeout stays up; once idle it is closed', async () => {
    // Pings off: only the test's own traffic keeps the connection busy.
    const [a, b] = [await node({ inactivityTimeoutMs: 2000, pings: false }), await node({ inactivityTimeoutMs: 2000, pings: false })];
    nodes.push(a, b);
    await b.handle(PROTOCOL, (s: Stream) => {
      s.addEventListener('message', (evt) => s.send(evt.data)); // echo
    });
    const s = await a.dialProtocol(b.getMultiaddrs()[0]!, PROTOCOL);
    const conn = a.getConnections(b.peerId)[0]!;
    let echoed = 0;
    s.addEventListener('message', (evt) => (echoed += evt.data.byteLength));
    // 9 s of a message every 100 ms: Bun's one-shot deadline (armed at 2 s) would have fired at ~4 s.
    const until = Date.now() + 9000;
    while (Date.now() < until) {
      s.send(new Uint8Array(100));
      await Bun.sleep(100);
    }
    await waitFor(() => echoed >= 8000 || null, 'the echoes', 2000);
    expect(conn.status).toBe('open');
    // Idle now: closed after 2 s of nothing (Bun checks its deadlines every ~4 s).
    const idleSince = Date.now();
    await waitFor(() => (a.getConnections(b.peerId).length === 0 && conn.status !== 'open') || null, () => `the idle connection closed (status ${conn.status}, ${a.getConnections(b.peerId).length} connections)`, 12_000);
    expect(Date.now() - idleSince).toBeGreaterThanOrEqual(1500);
  }, 40_000);

  test('with unheard events skipped and frames untraced, a writer held back by a paused reader still hears drain and idle; once and removed listeners behave', async () => {
    expect(quietEvents()).toBe(true);
    let unexpected = false;
    expect(quietFrames(() => (unexpected = true))).toBe(true);
    const [a, b] = [await node(), await node()];
    nodes.push(a, b);
    const TOTAL = 3 * WINDOW; // past one yamux window: the writer must wait for the reader
    let received = 0;
    const got = Promise.withResolvers<void>();
    let reader: Stream | null = null;
    await b.handle(PROTOCOL, (s: Stream) => {
      reader = s;
      s.maxReadBufferLength = 2 * WINDOW;
      s.pause();
      s.addEventListener('message', (evt) => {
        received += evt.data.byteLength;
        if (received >= TOTAL) got.resolve();
      });
    });
    const s = await a.dialProtocol(b.getMultiaddrs()[0]!, PROTOCOL);
    const counts = { drain: 0, idle: 0, once: 0, removed: 0 };
    s.addEventListener('drain', () => counts.drain++);
    s.addEventListener('idle', () => counts.idle++);
    s.addEventListener('idle', () => counts.once++, { once: true });
    const removed = (): void => {
      counts.removed++;
    };
    s.addEventListener('idle', removed);
    s.removeEventListener('idle', removed);
    const chunk = new Uint8Array(256 * 1024);
    for (let sent = 0; sent < TOTAL; sent += chunk.length) s.send(chunk);
    expect(s.writeBufferLength).toBeGreaterThan(0); // held: the reader has not opened its window
    await waitFor(() => reader !== null, 'the reader stream', 5000);
    reader!.resume();
    await Promise.race([got.promise, Bun.sleep(20_000)]);
    expect(received).toBe(TOTAL);
    await waitFor(() => s.writeBufferLength === 0 && counts.idle > 0, 'an empty write buffer and its idle event', 5000);
    expect(counts.drain).toBeGreaterThan(0);
    expect(counts.once).toBe(1);
    expect(counts.removed).toBe(0);
    expect(unexpected).toBe(false);
    expect(quietFramesApplied()).toBe(true);
  }, 40_000);

  test('a direct receiver gets every byte once and in order, across pauses that send bytes through the event path', async () => {
    expect(directReceive()).toBe(true);
    const [a, b] = [await node(), await node()];
    nodes.push(a, b);
    const TOTAL = 16 * 1024 * 1024;
    const pattern = (i: number) => (i * 7 + (i >>> 11)) & 0xff;
    let received = 0, wrong = -1, direct = 0, events = 0;
    const got = Promise.withResolvers<void>();
    await b.handle(PROTOCOL, (s: Stream) => {
      const read = (d: Uint8Array | Iterable<Uint8Array>): void => {
        for (const c of d instanceof Uint8Array ? [d] : d) {
          for (let j = 0; j < c.length; j++) if (wrong < 0 && c[j] !== pattern(received + j)) wrong = received + j;
          received += c.length;
        }
        // Every few reads the reader's socket is "full": pause, and resume a moment later.
        if ((direct + events) % 7 === 3) {
          s.pause();
          setTimeout(() => s.readStatus === 'paused' && s.resume(), 2);
        }
        if (received >= TOTAL) got.resolve();
      };
      s.addEventListener('message', (evt) => {
        events++;
        read(evt.data);
      });
      receiveDirectly(s, (d) => {
        direct++;
        read(d);
      });
    });
    const s = await a.dialProtocol(b.getMultiaddrs()[0]!, PROTOCOL);
    for (let sent = 0; sent < TOTAL;) {
      const n = Math.min(TOTAL - sent, 1 + ((sent * 31) % 50_000)); // odd sizes: small frames and large ones
      const chunk = new Uint8Array(n);
      for (let j = 0; j < n; j++) chunk[j] = pattern(sent + j);
      if (!s.send(chunk)) await new Promise((r) => s.addEventListener('drain', r, { once: true }));
      sent += n;
    }
    await Promise.race([got.promise, Bun.sleep(30_000)]);
    expect(received).toBe(TOTAL);
    expect(wrong).toBe(-1);
    expect(direct).toBeGreaterThan(0);
    expect(events).toBeGreaterThan(0);
  }, 40_000);

  test('a reply is read by its type alone; anything more is decoded in full and malformed input is refused', () => {
    expect(replyType(encodeProxy({ type: MsgType.SUCCESS }))).toBe(MsgType.SUCCESS);
    expect(replyType(encodeProxy({ type: MsgType.FAILED }))).toBe(MsgType.FAILED);
    // The original's replies echo the request's fields.
    expect(replyType(encodeProxy({ type: MsgType.SUCCESS, protocol: 'tcp', nodeName: 'edge-b', ip: '10.0.0.7', port: 80 }))).toBe(MsgType.SUCCESS);
    expect(() => replyType(Uint8Array.from([0x08, 0x07]))).toThrow(DecodeError); // no such type
    expect(() => replyType(Uint8Array.from([0x08, 0x01, 0x12, 0x09, 0x61]))).toThrow(DecodeError); // truncated string
  });

  test('a CONNECT built from kept fields and first bytes is the same message, byte for byte; names decode as UTF-8', () => {
    const m = { type: MsgType.CONNECT, protocol: 'tcp', nodeName: 'edge-b', ip: '10.0.0.7', port: 8080 };
    const fields = encodeProxy(m);
    for (const early of [undefined, new Uint8Array(0), new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'), new Uint8Array(20_000).fill(7)]) {
      expect(framedConnect(fields, early)).toEqual(lengthPrefixed(encodeProxy({ ...m, early })));
    }
    const named = encodeProxy({ ...m, nodeName: 'nœud-é-' + 'x'.repeat(70) });
    expect(decodeProxy(named).nodeName).toBe('nœud-é-' + 'x'.repeat(70));
    const bad = encodeProxy({ ...m, nodeName: 'ab' });
    bad[bad.indexOf(0x61)] = 0xff; // 'a' → a byte that is never UTF-8
    expect(() => decodeProxy(bad)).toThrow(DecodeError);
  });

  test('small messages gathered per turn keep their order among large ones and across streams, and reach the peer when the connection closes right after them', async () => {
    const [a, b] = [await node(), await node()];
    nodes.push(a, b);
    const got = new Map<string, Uint8Array[]>();
    const ended = new Map<string, PromiseWithResolvers<void>>();
    const endOf = (id: string) => ended.get(id) ?? ended.set(id, Promise.withResolvers<void>()).get(id)!;
    await b.handle(PROTOCOL, (s: Stream) => {
      let id: string | null = null;
      const parts: Uint8Array[] = [];
      s.addEventListener('message', (evt) => {
        const d = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray();
        parts.push(d.slice());
        if (id === null) {
          id = new TextDecoder().decode(d.subarray(0, 2)); // each stream starts with its two-letter name
          got.set(id, parts);
        }
      });
      s.addEventListener('remoteCloseWrite', () => id && endOf(id).resolve());
      s.addEventListener('close', () => id && endOf(id).resolve());
    });
    const conn = await a.dial(b.getMultiaddrs()[0]!);
    // Three streams written in one turn: runs of small messages (gathered) around large ones (written at once).
    const streams = await Promise.all(['s0', 's1', 's2'].map(async (name) => ({ name, s: await conn.newStream(PROTOCOL), sent: [] as Uint8Array[] })));
    let seq = 0;
    const message = (n: number): Uint8Array => {
      const m = new Uint8Array(n);
      for (let i = 0; i < n; i++) m[i] = (seq * 31 + i) & 0xff;
      seq++;
      return m;
    };
    for (const x of streams) {
      const head = new TextEncoder().encode(x.name);
      x.s.send(head);
      x.sent.push(head);
    }
    for (let round = 0; round < 20; round++) {
      for (const x of streams) {
        const sizes = round % 5 === 4 ? [40_000] : [1, 12, 300, 5000];
        for (const n of sizes) {
          const m = message(n);
          x.s.send(m);
          x.sent.push(m);
        }
      }
    }
    for (const x of streams) void x.s.close();
    await Promise.all(streams.map((x) => Promise.race([endOf(x.name).promise, Bun.sleep(10_000)])));
    const flat = (parts: Uint8Array[]) => Buffer.concat(parts);
    for (const x of streams) expect(flat(got.get(x.name) ?? [])).toEqual(flat(x.sent));
    // Last words: a small message and, in the same turn, the connection's close. The message is still gathered
    // when close() starts; it must be written before the socket ends.
    const last = await conn.newStream(PROTOCOL);
    last.send(new TextEncoder().encode('lw: the last words'));
    void conn.close();
    await Promise.race([endOf('lw').promise, Bun.sleep(5000)]);
    expect(new TextDecoder().decode(flat(got.get('lw') ?? []))).toBe('lw: the last words');
  }, 40_000);
});
