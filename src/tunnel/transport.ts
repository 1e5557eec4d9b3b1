/**
 * tunnel/ — a libp2p TCP transport on Bun's native sockets (Bun.listen / Bun.connect), in place of @libp2p/tcp.
 *
 * Why: @libp2p/tcp runs on node:net, whose Node stream emulation in Bun costs more CPU per message than the rest
 * of the stack below yamux (profiled: readable push + writable buffering ~20% of an agent's CPU per proxied
 * connection). Here a read is one `onData(chunk)` and a write is one `socket.write()`; a partial write keeps
 * the rest, reports "cannot send more" and emits `drain` when the kernel took it all (real backpressure).
 *
 * Same multiaddrs and semantics as @libp2p/tcp (/ip4|ip6/…/tcp/…, keep-alive, no Nagle, inactivity timeout).
 *
 *   transports: [bunTcp({ inactivityTimeoutMs: 120_000 })]
 */
import type {
  AbortOptions, ComponentLogger, Connection, CreateListenerOptions, DialTransportOptions, Listener, ListenerEvents, Logger, MultiaddrConnection,
  Transport,
} from '@libp2p/interface';
import { AbortError, TimeoutError, serviceCapabilities, transportSymbol } from '@libp2p/interface';
import { AbstractMultiaddrConnection, getThinWaistAddresses, ipPortToMultiaddr } from '@libp2p/utils';
import { type Multiaddr } from '@multiformats/multiaddr';
import { TCP as TCPMatcher } from '@multiformats/multiaddr-matcher';
import type { Socket, TCPSocketListener } from 'bun';
import { TypedEventEmitter } from 'main-event';
import { isIPv4 } from 'node:net';
import { FixedPort, FixedPortBusy } from '../net/fixed-port.ts';
import { idleFor } from '../net/idle.ts';
import type { Admission, Ticket } from './admission.ts';
import type { Uint8ArrayList } from 'uint8arraylist';

export interface BunTcpInit {
  /** Close a connection with no traffic for this long (libp2p pings keep live ones busy). */
  inactivityTimeoutMs?: number;
  /** Dial every IPv4 connection from this local port (hole punching, net/fixed-port.ts); null = any port. */
  fixedPort?: FixedPort | null;
  /** How long a dial may take. */
  connectTimeoutMs?: number;
  /** Limits on inbound connections waiting for their handshake (admission.ts); absent: libp2p's own only. */
  admission?: Admission | null;
}

interface SocketData {
  conn: BunTcpConnection | null;
  /** Last read, write or drain (Date.now()): the inactivity timeout counts from here (net/idle.ts). */
  lastActive: number;
  /** An inbound connection's admission until its first bytes arrive. */
  ticket: Ticket | null;
}

/** A socket's state before its connection object exists. */
const socketData = (): SocketData => ({ conn: null, lastActive: Date.now(), ticket: null });

class BunTcpConnection extends AbstractMultiaddrConnection {
  /** Bytes the kernel did not take yet (a view into the caller's buffer: libp2p does not reuse sent buffers). */
  private pending: Uint8Array[] = [];
  private closedPromise: PromiseWithResolvers<void> = Promise.withResolvers();

  constructor(readonly socket: Socket<SocketData>, init: { remoteAddr: Multiaddr; direction: 'inbound' | 'outbound'; log: Logger; localAddr?: Multiaddr }) {
    super(init);
  }

  /** Socket callbacks, routed here from the shared handler object. */
  bunData(chunk: Uint8Array): void {
    this.socket.data.lastActive = Date.now();
    this.onData(chunk);
  }

  bunDrain(): void {
    this.socket.data.lastActive = Date.now();
    while (this.pending.length) {
      const head = this.pending[0]!;
      const n = this.socket.write(head);
      if (n < head.length) {
        this.pending[0] = head.subarray(Math.max(0, n));
        return;
      }
      this.pending.shift();
    }
    this.safeDispatchEvent('drain');
  }

  bunEnd(): void {
    // allowHalfOpen is off, as in @libp2p/tcp: a FIN from the peer ends the connection.
    this.onTransportClosed();
  }

  bunClose(err?: Error): void {
    this.closedPromise.resolve();
    if (err) this.abort(err);
    else this.onTransportClosed();
  }

  sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean } {
    this.socket.data.lastActive = Date.now();
    let sentBytes = 0;
    for (const buf of data) {
      sentBytes += buf.byteLength;
      if (this.pending.length) {
        this.pending.push(buf);
        continue;
      }
      const n = this.socket.write(buf);
      if (n < buf.length) this.pending.push(buf.subarray(Math.max(0, n)));
    }
    return { sentBytes, canSendMore: this.pending.length === 0 };
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    // Unsent bytes first, then FIN; the peer's FIN (or a timeout) closes the socket.
    while (this.pending.length && !options?.signal?.aborted) {
      await new Promise<void>((resolve) => this.addEventListener('drain', () => resolve(), { once: true }));
    }
    this.socket.end();
    const onAbort = (): void => {
      this.socket.terminate();
    };
    options?.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await this.closedPromise.promise;
    } finally {
      options?.signal?.removeEventListener('abort', onAbort);
    }
  }

  sendReset(): void {
    this.pending = [];
    this.socket.terminate();
  }

  sendPause(): void {
    this.socket.pause();
  }

  sendResume(): void {
    this.socket.resume();
  }
}

/** One handler object for every socket: per-connection state lives in socket.data. */
function handlers(onOpen: (s: Socket<SocketData>) => void, inactivityMs: number): Bun.SocketHandler<SocketData, 'uint8array'> {
  return {
    binaryType: 'uint8array',
    open(s) {
      s.setNoDelay(true);
      s.setKeepAlive(true, 30_000);
      if (inactivityMs > 0) s.timeout(Math.ceil(inactivityMs / 1000));
      onOpen(s);
    },
    data(s, d) {
      const t = s.data.ticket;
      if (t !== null) {
        t.spoke();
        s.data.ticket = null;
      }
      s.data.conn?.bunData(d);
    },
    drain(s) {
      s.data.conn?.bunDrain();
    },
    end(s) {
      s.data.conn?.bunEnd();
    },
    timeout(s) {
      if (!idleFor(s, s.data.lastActive, Math.ceil(inactivityMs / 1000))) return;
      s.data.conn?.abort(new TimeoutError('TCP connection inactive'));
      s.terminate();
    },
    error(s, err) {
      s.data.conn?.bunClose(err);
    },
    close(s, err) {
      s.data.conn?.bunClose(err ?? undefined);
    },
  };
}

function hostPort(ma: Multiaddr): { host: string; port: number } {
  let host = '';
  let port = 0;
  for (const c of ma.getComponents()) {
    if ((c.name === 'ip4' || c.name === 'ip6') && c.value) host = c.value;
    if (c.name === 'tcp' && c.value) port = Number(c.value);
  }
  return { host, port };
}

class BunTcpListener extends TypedEventEmitter<ListenerEvents> implements Listener {
  private server: TCPSocketListener<SocketData> | null = null;
  private listeningAddr: Multiaddr | undefined;
  private readonly sockets = new Set<Socket<SocketData>>();
  private readonly shutdown = new AbortController();

  constructor(private readonly o: CreateListenerOptions, private readonly log: Logger, private readonly inactivityMs: number, private readonly admission: Admission | null) {
    super();
  }

  async listen(ma: Multiaddr): Promise<void> {
    const { host, port } = hostPort(ma);
    this.listeningAddr = ma;
    this.server = Bun.listen<SocketData>({
      hostname: host,
      port,
      data: socketData(),
      // Bun's typings only allow "buffer" here; the handlers ask for plain Uint8Array views.
      socket: handlers((s) => this.onSocket(s), this.inactivityMs) as unknown as Bun.SocketHandler<SocketData>,
    });
    this.safeDispatchEvent('listening');
  }

  private onSocket(s: Socket<SocketData>): void {
    s.data = socketData();
    let remoteAddr: Multiaddr;
    try {
      remoteAddr = ipPortToMultiaddr(s.remoteAddress, s.remotePort);
    } catch (e) {
      this.log.error('inbound connection without a usable remote address - %e', e);
      s.terminate();
      return;
    }
    // Admission first: a connection refused here costs an accept and a close, nothing else (admission.ts).
    const ticket = this.admission ? this.admission.admit(s.remoteAddress, () => s.terminate()) : null;
    if (this.admission && !ticket) {
      s.terminate();
      return;
    }
    s.data.ticket = ticket;
    const conn = new BunTcpConnection(s, { remoteAddr, direction: 'inbound', log: this.log.newScope('connection'), localAddr: this.listeningAddr });
    s.data.conn = conn;
    this.sockets.add(s);
    conn.addEventListener('close', () => {
      this.sockets.delete(s);
      ticket?.done();
    });
    this.o.upgrader.upgradeInbound(conn as MultiaddrConnection, { signal: this.shutdown.signal }).then(() => ticket?.done(), (err: Error) => {
      ticket?.done();
      this.log.error('inbound connection upgrade failed - %e', err);
      conn.abort(err);
    });
  }

  getAddrs(): Multiaddr[] {
    if (!this.server) return [];
    return getThinWaistAddresses(this.listeningAddr, this.server.port);
  }

  updateAnnounceAddrs(): void {}

  async close(): Promise<void> {
    this.shutdown.abort();
    this.server?.stop(true);
    this.server = null;
    for (const s of this.sockets) s.terminate();
    this.sockets.clear();
    this.safeDispatchEvent('close');
  }
}

class BunTcp implements Transport {
  readonly [transportSymbol] = true as const;
  readonly [Symbol.toStringTag] = 'edgemesh/bun-tcp';
  readonly [serviceCapabilities] = ['@libp2p/transport'];
  private readonly log: Logger;

  constructor(private readonly components: { logger: ComponentLogger }, private readonly init: BunTcpInit) {
    this.log = components.logger.forComponent('edgemesh:tcp');
  }

  async dial(ma: Multiaddr, options: DialTransportOptions): Promise<Connection> {
    options.signal.throwIfAborted();
    const { host, port } = hostPort(ma);
    const conn = await openConnection(host, port, 'outbound', this.init, this.log, options.signal, ma);
    try {
      return await options.upgrader.upgradeOutbound(conn as MultiaddrConnection, options);
    } catch (err) {
      conn.abort(err as Error);
      throw err;
    }
  }

  createListener(options: CreateListenerOptions): Listener {
    return new BunTcpListener(options, this.log.newScope('listener'), this.init.inactivityTimeoutMs ?? 120_000, this.init.admission ?? null);
  }

  listenFilter(multiaddrs: Multiaddr[]): Multiaddr[] {
    return multiaddrs.filter((ma) => TCPMatcher.exactMatch(ma));
  }

  dialFilter(multiaddrs: Multiaddr[]): Multiaddr[] {
    return this.listenFilter(multiaddrs);
  }
}

/**
 * A raw (not yet upgraded) connection to host:port, from the fixed port when there is one (falling back to any
 * port when that 4-tuple is busy). The hole-punching service upgrades it itself, choosing the role.
 */
export async function openConnection(
  host: string, port: number, direction: 'inbound' | 'outbound', init: BunTcpInit, log: Logger, signal: AbortSignal, remoteAddr?: Multiaddr,
): Promise<MultiaddrConnection> {
  const inactivity = init.inactivityTimeoutMs ?? 120_000;
  const socketHandlers = handlers(() => {}, inactivity) as unknown as Bun.SocketHandler<SocketData>;
  let socket: Socket<SocketData> | null = null;
  if (init.fixedPort && isIPv4(host)) {
    try {
      const fd = await init.fixedPort.connect(host, port, init.connectTimeoutMs ?? 10_000, signal);
      socket = await Bun.connect<SocketData>({ fd, data: socketData(), socket: socketHandlers } as unknown as Bun.TCPSocketConnectOptions<SocketData>);
    } catch (e) {
      if (!(e instanceof FixedPortBusy)) throw Object.assign(e as Error, { message: `connection error ${host}:${port}: ${(e as Error).message}` });
      log('fixed source port busy for %s:%d, dialing from any port', host, port);
    }
  }
  socket ??= await new Promise<Socket<SocketData>>((resolve, reject) => {
    const onAbort = (): void => reject(new AbortError());
    signal.addEventListener('abort', onAbort, { once: true });
    Bun.connect<SocketData>({ hostname: host, port, data: socketData(), socket: socketHandlers }).then(
      (s) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) {
          s.terminate();
          return;
        }
        resolve(s);
      },
      (err: Error) => {
        signal.removeEventListener('abort', onAbort);
        reject(Object.assign(err, { message: `connection error ${host}:${port}: ${err.message}` }));
      },
    );
  });
  const conn = new BunTcpConnection(socket, { remoteAddr: remoteAddr ?? ipPortToMultiaddr(host, port), direction, log: log.newScope('connection') });
  socket.data.conn = conn;
  return conn as MultiaddrConnection;
}

/** Whether a connection runs through a circuit relay (its remote address ends in /p2p-circuit/p2p/<peer>). */
export function isRelayed(c: { remoteAddr: Multiaddr }): boolean {
  return c.remoteAddr.toString().includes('/p2p-circuit');
}

/** A libp2p `transports` entry. */
export function bunTcp(init: BunTcpInit = {}): (components: { logger: ComponentLogger }) => Transport {
  return (components) => new BunTcp(components, init);
}
