/**
 * gateway/ — accepting client connections for a server port, plain (Bun.listen) or TLS (node:tls through
 * tls.ts), with one deadline sweep a second. The HTTP listener (server.ts) and the byte-stream listener
 * (stream.ts) differ only in what a connection does with its bytes; this is the rest.
 *
 *   const l = new ConnListener('10.0.0.5', 80, () => new Client(...), certs?)
 *   await l.start()   // rejects when the address cannot be bound
 *   l.stop(false)     // stop accepting; open connections finish, their deadlines kept until the last ends
 */
import type { Socket, TCPSocketListener } from 'bun';
import type tls from 'node:tls';
import type { ClientSock } from './sock.ts';
import { type PortCertificates, listenTls } from './tls.ts';

/** A client connection as the listener drives it. */
export interface ListenedConn {
  sock: ClientSock | null;
  sockOpened(s: ClientSock, remoteAddress: string): void;
  sockData(b: Uint8Array): void;
  sockDrain(): void;
  /** FIN from the client. */
  sockEnd(): void;
  /** The socket is gone; `reset` when it ended with an error. */
  sockClosed(reset: boolean): void;
  /** Called every second with Date.now(). */
  sweep(now: number): void;
}

type Holder<C> = { c: C };

export class ConnListener<C extends ListenedConn> {
  readonly conns = new Set<C>();
  private server: TCPSocketListener<Holder<C>> | null = null;
  private tlsServer: tls.Server | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private stopped = false;

  constructor(readonly address: string, readonly port: number, private readonly make: () => C, private readonly certs?: () => PortCertificates) {}

  async start(): Promise<void> {
    if (this.certs) {
      this.tlsServer = await listenTls(this.address, this.port, this.certs, (sock, remote, ev) => {
        const c = this.opened(sock, remote);
        ev.on('data', (b) => c.sockData(b));
        ev.on('drain', () => c.sockDrain());
        ev.on('end', () => c.sockEnd());
        ev.on('close', () => this.closed(c, false));
      });
    } else {
      this.server = Bun.listen<Holder<C>>({
        hostname: this.address,
        port: this.port,
        allowHalfOpen: true,
        data: undefined as unknown as Holder<C>,
        // The typings allow only "buffer" as binaryType here; these handlers ask for "uint8array".
        socket: {
          binaryType: 'uint8array',
          open: (s: Socket<Holder<C>>) => void (s.data = { c: this.opened(s, s.remoteAddress) }),
          data: (s, d) => s.data.c.sockData(d),
          drain: (s) => s.data.c.sockDrain(),
          end: (s) => s.data.c.sockEnd(),
          close: (s, err) => this.closed(s.data.c, !!err),
          error: (s) => this.closed(s.data.c, true),
        } as Bun.SocketHandler<Holder<C>, 'uint8array'> as unknown as Bun.SocketHandler<Holder<C>>,
      });
    }
    this.timer = setInterval(() => {
      const now = Date.now();
      for (const c of this.conns) c.sweep(now);
      // Stopped: the deadlines run until the last connection has ended.
      if (this.stopped && !this.conns.size) this.clearTimer();
    }, 1000);
    this.timer.unref?.();
  }

  /** Stops accepting; `drop` also closes the connections it has (otherwise they finish on their own). */
  stop(drop: boolean): void {
    this.stopped = true;
    this.server?.stop(drop);
    this.server = null;
    this.tlsServer?.close();
    this.tlsServer = null;
    if (drop) for (const c of this.conns) c.sock?.terminate();
    if (drop || !this.conns.size) this.clearTimer();
  }

  private opened(s: ClientSock, remote: string): C {
    const c = this.make();
    this.conns.add(c);
    c.sockOpened(s, remote);
    return c;
  }

  private closed(c: C, reset: boolean): void {
    if (!this.conns.delete(c)) return; // error then close: once
    c.sockClosed(reset);
  }

  private clearTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
