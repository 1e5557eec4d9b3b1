/**
 * Load of `edgemesh bench`, on Bun's sockets, all time-bounded (a slow board runs as long as a fast one):
 * an echo server with real backpressure, bulk echo with its throughput over time, round trips, a minimal
 * HTTP/1.1 server and client (keep-alive and a new connection per request), and a UDP query load.
 */
import type { Series } from './report.ts';

const HOST = '127.0.0.1';

/** An echo server with real backpressure: what the socket does not take now waits, and reading pauses. */
export function echoServer(): Bun.TCPSocketListener<{ rest: Uint8Array | null }> {
  return Bun.listen<{ rest: Uint8Array | null }>({
    hostname: HOST,
    port: 0,
    socket: {
      open(s) {
        s.data = { rest: null };
      },
      data(s, d) {
        const n = s.write(d);
        if (n < d.length) {
          s.data.rest = d.subarray(Math.max(0, n));
          s.pause();
        }
      },
      drain(s) {
        const r = s.data.rest;
        if (!r) return;
        const n = s.write(r);
        if (n < r.length) {
          s.data.rest = r.subarray(Math.max(0, n));
          return;
        }
        s.data.rest = null;
        s.resume();
      },
      error() {},
    },
  });
}

/**
 * Send as fast as the socket takes it and count what comes back for `seconds` from the first echoed byte (the
 * connection's set-up, through a tunnel say, is not throughput): MB/s echoed, and the rate per 100 ms. `live`
 * is called with the rate so far about every 100 ms.
 */
export async function bulk(port: number, seconds: number, live?: (mbps: number) => void): Promise<{ mbps: number; series: Series }> {
  const chunk = new Uint8Array(256 * 1024);
  let got = 0;
  let stopSending = false;
  const points: { t: number; value: number }[] = [];
  let t0 = 0;
  let lastT = 0;
  let lastGot = 0;
  let tick: ReturnType<typeof setInterval> | null = null;
  const startClock = (): void => {
    t0 = lastT = performance.now();
    tick = setInterval(() => {
      const now = performance.now();
      points.push({ t: Number(((now - t0) / 1000).toFixed(2)), value: Number(((got - lastGot) / 1e6 / ((now - lastT) / 1000)).toFixed(1)) });
      lastT = now;
      lastGot = got;
      live?.(got / 1e6 / ((now - t0) / 1000));
    }, 100);
  };
  const setupLimitMs = Math.max(10_000, seconds * 20_000);
  let noEcho: ReturnType<typeof setTimeout> | null = null;
  try {
    const echoed = await new Promise<number>((resolve, reject) => {
      let done = false;
      const finish = (s: { end(): void }) => {
        if (done) return;
        done = true;
        stopSending = true;
        const bytes = got;
        s.end();
        resolve(bytes);
      };
      const pump = (s: { write(b: Uint8Array): number }) => {
        while (!stopSending) {
          const n = s.write(chunk);
          if (n < chunk.length) return;
        }
      };
      noEcho = setTimeout(() => reject(new Error(`no byte came back within ${setupLimitMs / 1000} s`)), setupLimitMs);
      Bun.connect({ hostname: HOST, port, socket: {
        open: pump,
        drain: pump,
        data(s, d) {
          if (!t0) {
            if (noEcho) clearTimeout(noEcho);
            startClock();
            setTimeout(() => finish(s), seconds * 1000);
          }
          got += d.length;
        },
        error(_s, e) { reject(e); },
        connectError(_s, e) { reject(e); },
      } }).catch(reject);
    });
    return { mbps: echoed / 1e6 / seconds, series: { unit: 'MB/s', points } };
  } finally {
    if (tick) clearInterval(tick);
    if (noEcho) clearTimeout(noEcho);
  }
}

/** Sequential round trips of `size` bytes on one connection for `seconds`; latencies in µs. */
export async function roundTrips(port: number, seconds: number, size: number): Promise<number[]> {
  const lat: number[] = [];
  const msg = new Uint8Array(size);
  const end = performance.now() + seconds * 1000;
  await new Promise<void>((resolve, reject) => {
    let t = 0;
    let got = 0;
    Bun.connect({ hostname: HOST, port, socket: {
      open(s) {
        t = performance.now();
        s.write(msg);
      },
      data(s, d) {
        got += d.length;
        if (got < size) return;
        got -= size;
        const now = performance.now();
        lat.push((now - t) * 1000);
        if (now >= end) {
          s.end();
          resolve();
          return;
        }
        t = now;
        s.write(msg);
      },
      error(_s, e) { reject(e); },
      connectError(_s, e) { reject(e); },
    } }).catch(reject);
  });
  return lat;
}

const RESPONSE = new TextEncoder().encode('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello');
const REQUEST = (close: boolean) => new TextEncoder().encode(`GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: edgemesh-bench\r\n${close ? 'Connection: close\r\n' : ''}\r\n`);

/**
 * The smallest HTTP/1.1 server: every request head (up to its blank line) gets one fixed 200 response; a
 * `Connection: close` request is answered and closed. Requests carry no body here.
 */
export function httpServer(): Bun.TCPSocketListener<{ tail: string }> {
  return Bun.listen<{ tail: string }>({
    hostname: HOST,
    port: 0,
    socket: {
      open(s) { s.data = { tail: '' }; },
      data(s, d) {
        let text = s.data.tail + new TextDecoder().decode(d);
        let i: number;
        while ((i = text.indexOf('\r\n\r\n')) >= 0) {
          const head = text.slice(0, i);
          text = text.slice(i + 4);
          s.write(RESPONSE);
          if (/\r\nconnection:\s*close/i.test(head)) {
            s.end();
            return;
          }
        }
        s.data.tail = text;
      },
      error() {},
    },
  });
}

/**
 * HTTP requests for `seconds` over `connections` connections: keep-alive (each connection sends its next request
 * when the response is in) or a new connection per request. Requests per second.
 */
export async function httpLoad(port: number, seconds: number, connections: number, keepAlive: boolean, live?: (rps: number) => void): Promise<number> {
  const req = REQUEST(!keepAlive);
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let done = 0;
  let failed = 0;
  const tick = setInterval(() => live?.(done / ((performance.now() - t0) / 1000)), 250);
  const worker = (): Promise<void> => new Promise<void>((resolve) => {
    const open = (): void => {
      let got = 0;
      let finished = false;
      const next = (s: { write(b: Uint8Array): number; end(): void }): void => {
        if (performance.now() >= end) {
          finished = true;
          s.end();
          resolve();
          return;
        }
        s.write(req);
      };
      Bun.connect({ hostname: HOST, port, socket: {
        open: next,
        data(s, d) {
          got += d.length;
          while (got >= RESPONSE.length) {
            got -= RESPONSE.length;
            done++;
            if (keepAlive) next(s);
          }
        },
        close() {
          if (finished) return;
          if (keepAlive) {
            failed++;
            resolve();
          } else if (performance.now() < end) open();
          else resolve();
        },
        error() {},
        connectError() {
          failed++;
          if (performance.now() < end) setTimeout(open, 5);
          else resolve();
        },
      } }).catch(() => {
        failed++;
        resolve();
      });
    };
    open();
  });
  await Promise.all(Array.from({ length: connections }, worker));
  clearInterval(tick);
  if (failed > connections && done === 0) throw new Error(`HTTP load: every connection failed (${failed})`);
  return done / ((performance.now() - t0) / 1000);
}

/** A UDP echo server. */
export async function udpEcho(): Promise<Bun.udp.Socket<'buffer'>> {
  return Bun.udpSocket({ hostname: HOST, socket: { data(s, b, p, a) { s.send(b, p, a); }, error() {} } });
}

/**
 * Datagrams with a 2-byte id at the front (a DNS query's id), `window` outstanding from one socket, for `seconds`:
 * answers per second and latencies (µs). Lost datagrams are topped up so the window does not shrink.
 */
export async function udpLoad(port: number, queries: Uint8Array[], seconds: number, window: number): Promise<{ qps: number; lat: number[] }> {
  const sentAt = new Float64Array(65536);
  const lat: number[] = [];
  let next = 0;
  let done = 0;
  const end = performance.now() + seconds * 1000;
  let stop = false;
  const send = (s: { send(b: Uint8Array, p: number, a: string): boolean }) => {
    const q = queries[next % queries.length]!;
    const id = next & 0xffff;
    q[0] = id >> 8;
    q[1] = id & 0xff;
    sentAt[id] = performance.now();
    next++;
    s.send(q, port, HOST);
  };
  const sock = await Bun.udpSocket({ hostname: HOST, socket: {
    data(s, b) {
      const id = (b[0]! << 8) | b[1]!;
      lat.push((performance.now() - sentAt[id]!) * 1000);
      done++;
      if (!stop) send(s);
    },
    error() {},
  } });
  const t0 = performance.now();
  for (let i = 0; i < window; i++) send(sock);
  let lastDone = 0;
  await new Promise<void>((resolve) => {
    const guard = setInterval(() => {
      if (performance.now() >= end) {
        stop = true;
        clearInterval(guard);
        resolve();
        return;
      }
      if (done === lastDone) for (let i = 0; i < window / 4; i++) send(sock);
      lastDone = done;
    }, 100);
  });
  const secs = (performance.now() - t0) / 1000;
  sock.close();
  return { qps: done / secs, lat };
}
