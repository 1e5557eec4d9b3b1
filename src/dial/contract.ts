/**
 * dial/ — the contract for reaching an endpoint, whoever carries the bytes: a Bun socket to a local endpoint, or
 * a tunnel stream (or a session's framed connection) to an endpoint on another node. The proxy's splice, the
 * tunnel's receiver and later the gateway drive every such end the same way, through `Pipe`.
 *
 * The tunnel implements `RemoteDialer`; consumers receive it injected (the composition root hands it to
 * `Dialer`, route.ts), so neither dial/ nor its consumers import the tunnel, and the tunnel imports none of them.
 */

/** The socket-shaped subset a pump drives (Bun's Socket has all of it). */
export interface Pipe {
  /** Bytes taken (possibly fewer than offered: the caller keeps the rest and waits for `drain`). */
  write(chunk: Uint8Array): number;
  /** FIN: no more bytes from us once the buffered ones are out; reading goes on. */
  shutdown(): void;
  /** Both directions are done: close. */
  end(): void;
  /** Reset (RST semantics). */
  terminate(): void;
  pause(): void;
  resume(): void;
}

/** What a pipe reports to its owner. */
export interface PipeHandlers {
  data(chunk: Uint8Array): void;
  /** A refused write can be retried. */
  drain(): void;
  /** The remote closed its writing side (FIN). */
  end(): void;
  /** The pipe is gone; `reset` when it ended with an error (RST semantics). */
  close(reset: boolean): void;
}

/** Datagrams to one endpoint, boundaries kept. UDP may drop: a channel that cannot keep up drops, never buffers without bound. */
export interface DatagramChannel {
  send(d: Uint8Array): void;
  close(): void;
}

export interface DatagramHandlers {
  datagram(d: Uint8Array): void;
  closed(): void;
}

/** An endpoint on another node, as the tunnel's CONNECT names it. */
export interface RemoteTarget {
  nodeName: string;
  protocol: 'tcp' | 'udp';
  ip: string;
  port: number;
}

/** A TCP pipe to a remote endpoint; `sentEarly`: how many of the offered first bytes went with the CONNECT. */
export type RemotePipe = Pipe & { readonly sentEarly?: number };

/** What reaches endpoints on other nodes (the tunnel). */
export interface RemoteDialer {
  /**
   * A TCP byte pipe to an endpoint on another node; it delivers nothing until resume(). `early`: the client's
   * first bytes, which may ride with the CONNECT (`sentEarly` on the pipe says how many did; the caller sends the rest).
   */
  open(t: RemoteTarget & { protocol: 'tcp' }, h: PipeHandlers, signal: AbortSignal, early?: Uint8Array): Promise<RemotePipe>;
  /** Datagrams to a UDP endpoint on another node, framed inside one stream (boundaries kept). */
  openDatagrams(t: RemoteTarget & { protocol: 'udp' }, h: DatagramHandlers, signal: AbortSignal): Promise<DatagramChannel>;
  /** Worth waiting a moment for the client's first bytes before opening (they can ride with the CONNECT). */
  readonly takesEarly?: boolean;
  /**
   * Whether an endpoint on node `nodeName` at `ip` can be dialed from here without the tunnel (a hostNetwork
   * endpoint at the address of an authenticated direct connection to that node).
   */
  reachesDirectly?(nodeName: string, ip: string): boolean;
}
