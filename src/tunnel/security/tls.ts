/**
 * tunnel/ — the libp2p TLS 1.3 handshake (/tls/1.0.0, libp2p/specs tls.md) as a connection encrypter that works
 * on Bun. It authenticates the peer: the certificate carries the peer's libp2p public key and a signature over
 * the certificate key, so the remote peer ID is proven, not claimed.
 *
 * Why our own encrypter around @libp2p/tls's certificate helpers: the stock encrypter sets both `ALPNProtocols`
 * and `ALPNCallback` on every socket and Bun refuses that combination, so every handshake fails. Here the
 * server side selects with the callback only and the client side offers the list only (early muxer negotiation
 * still works). It also makes the certificate once per node instead of once per connection (an ECDSA key
 * generation and an Ed25519 signature saved on every dial).
 */
import type { AbortOptions, ComponentLogger, ConnectionEncrypter, MessageStream, PrivateKey, SecureConnectionOptions, SecuredConnection, StreamMuxerFactory } from '@libp2p/interface';
import { InvalidCryptoExchangeError, serviceCapabilities } from '@libp2p/interface';
import type { TLSSocket } from 'node:tls';
import type { Uint8ArrayList } from 'uint8arraylist';
import { isPnetConnection } from './pnet.ts';
import { PskAdmissionError, proveAdmission } from './psk-admission.ts';

export const TLS_PROTOCOL = '/tls/1.0.0';

/**
 * The certificate helpers (@peculiar/x509, its WebCrypto shim and ASN.1) and node:tls, imported at the first
 * handshake: evaluating them took ~30 ms of the agent's start-up (measured on the compiled binary), before any
 * peer needed them. Concurrent first handshakes share one import.
 */
type TlsLib = typeof import('@libp2p/tls/utils') & { tls: typeof import('node:tls') };
let tlsLib: Promise<TlsLib> | null = null;
const loadTlsLib = (): Promise<TlsLib> =>
  (tlsLib ??= Promise.all([import('@libp2p/tls/utils'), import('node:tls')]).then(([utils, tls]) => ({ ...utils, tls })));

interface TlsComponents {
  privateKey: PrivateKey;
  logger: ComponentLogger;
  upgrader: { getStreamMuxers(): Map<string, StreamMuxerFactory> };
}

/** The private network's key, when the PSK is on: connections that did not come through pnet must prove it here. */
export interface TlsPsk {
  key: Uint8Array;
  /**
   * Deadline of the proof exchange itself. The caller's signal is not enough: an outbound upgrade may have no
   * deadline, and a peer without the key can leave our tag unanswered for ever (its muxer reads the tag as the
   * start of a frame and waits for the rest).
   */
  timeoutMs: number;
  /**
   * A peer failed the proof ('mismatch'), or left, stalled or errored before finishing it ('incomplete'), on a
   * connection it dialed to us ('inbound') or we dialed to it ('outbound'); `remotePeer` as its certificate says.
   */
  onFailure(why: 'mismatch' | 'incomplete', remote: string, direction: 'inbound' | 'outbound', remotePeer: string): void;
}

class BunTls implements ConnectionEncrypter {
  readonly protocol = TLS_PROTOCOL;
  readonly [Symbol.toStringTag] = 'edgemesh/tls';
  readonly [serviceCapabilities] = ['@libp2p/connection-encryption'];
  private cert: Promise<{ cert: string; key: string }> | null = null;

  constructor(private readonly c: TlsComponents, private readonly psk: TlsPsk | null) {}

  secureInbound(connection: MessageStream, options?: SecureConnectionOptions): Promise<SecuredConnection> {
    return this.encrypt(connection, true, options);
  }

  secureOutbound(connection: MessageStream, options?: SecureConnectionOptions): Promise<SecuredConnection> {
    return this.encrypt(connection, false, options);
  }

  private certificate(lib: TlsLib): Promise<{ cert: string; key: string }> {
    this.cert ??= lib.generateCertificate(this.c.privateKey).catch((e: unknown) => {
      this.cert = null; // try again on the next connection
      throw e;
    });
    return this.cert;
  }

  private async encrypt(connection: MessageStream, isServer: boolean, options?: SecureConnectionOptions): Promise<SecuredConnection> {
    const log = connection.log.newScope('tls');
    const muxers = this.c.upgrader.getStreamMuxers();
    const early = options?.skipStreamMuxerNegotiation !== true;
    let streamMuxer: StreamMuxerFactory | undefined;
    const lib = await loadTlsLib();
    const { toNodeDuplex, verifyPeerCertificate } = lib;
    const { TLSSocket, connect } = lib.tls;
    const base = { ...(await this.certificate(lib)), minVersion: 'TLSv1.3' as const, maxVersion: 'TLSv1.3' as const, rejectUnauthorized: false };
    options?.signal?.throwIfAborted();
    const duplex = toNodeDuplex(connection);
    const socket = isServer
      ? new TLSSocket(duplex, {
          ...base,
          isServer: true,
          requestCert: true,
          ALPNCallback: ({ protocols }: { protocols: string[] }) => {
            if (!early) return 'libp2p';
            for (const p of protocols) {
              const m = muxers.get(p);
              if (m) {
                streamMuxer = m;
                return p;
              }
            }
            return protocols.includes('libp2p') ? 'libp2p' : undefined;
          },
        })
      : connect({ ...base, socket: duplex, ALPNProtocols: early ? [...muxers.keys(), 'libp2p'] : ['libp2p'] });
    duplex.on('error', (err: Error) => socket.emit('error', err));
    const onAbort = (): void => {
      socket.emit('error', Object.assign(new Error('TLS handshake timed out'), { name: 'HandshakeTimeoutError' }));
    };
    options?.signal?.addEventListener('abort', onAbort);
    try {
      return await new Promise<SecuredConnection>((resolveOuter, reject) => {
        // Kept until the handshake is settled: a failing socket can emit more than one error (the peer's reset
        // after our own refusal), and an 'error' with no listener would throw out of the event loop.
        let failed = false;
        const onError = (err: Error): void => {
          if (failed) return;
          failed = true;
          log.error('TLS handshake of %s connection failed - %e', connection.direction, err);
          socket.destroy();
          connection.abort(err);
          reject(err);
        };
        socket.on('error', onError);
        const resolve = (c: SecuredConnection): void => {
          socket.off('error', onError); // the secured stream's own handlers take over
          resolveOuter(c);
        };
        socket.once('secure', () => {
          const raw = socket.getPeerCertificate().raw;
          if (!raw) {
            socket.emit('error', new InvalidCryptoExchangeError('the peer sent no certificate'));
            return;
          }
          verifyPeerCertificate(new Uint8Array(raw), options?.remotePeer, log).then(
            (remotePeer) => {
              if (!isServer && early && typeof socket.alpnProtocol === 'string' && socket.alpnProtocol !== 'libp2p') {
                streamMuxer = muxers.get(socket.alpnProtocol);
                if (!streamMuxer) {
                  socket.emit('error', new InvalidCryptoExchangeError(`the peer chose muxer ${socket.alpnProtocol}, which we do not have`));
                  return;
                }
              }
              // Fail closed: with a PSK, any connection that did not come through pnet proves it here.
              const psk = this.psk && !isPnetConnection(connection) ? this.psk : null;
              if (!psk) return resolve({ remotePeer, connection: secure(lib, connection, socket), streamMuxer });
              const deadline = AbortSignal.timeout(psk.timeoutMs);
              return proveAdmission(socket, psk.key, isServer, options?.signal ? AbortSignal.any([options.signal, deadline]) : deadline).then(() => {
                const secured = secure(lib, connection, socket);
                socket.resume(); // the proof paused it; bytes after the peer's tag are buffered for the muxer
                resolve({ remotePeer, connection: secured, streamMuxer });
              }, (err: Error) => {
                // Every failed proof counts: a peer without the key may send less than a tag and then reset or
                // stall, which ends here as a socket error or the handshake timeout, not as a mismatch.
                psk.onFailure(err instanceof PskAdmissionError ? 'mismatch' : 'incomplete', String((connection as { remoteAddr?: unknown }).remoteAddr ?? 'unknown'), isServer ? 'inbound' : 'outbound', remotePeer.toString());
                socket.emit('error', err);
              });
            },
            (err: Error) => socket.emit('error', err),
          );
        });
      });
    } finally {
      options?.signal?.removeEventListener('abort', onAbort);
    }
  }
}

/** Past this, a message's buffers are written one by one (copying them together would cost more than a record). */
const COALESCE_MAX = 16 * 1024;
/**
 * A turn's gathering is written once it reaches this, not only at the turn's end: the peer starts on the first
 * messages while this side still works through the turn. Gathering the whole turn cut the most CPU but took up
 * to a fifth off keep-alive HTTP's rate in some runs (the two agents worked in turns instead of side by side);
 * 2 KiB kept most of the saving without that (docs/benchmarks.md).
 */
const GATHER_MAX = 2048;

/**
 * The secured stream, with one change: small messages are gathered and written to TLS once per event-loop turn
 * (setImmediate: Bun runs it after this poll's I/O callbacks, before the next poll, so nothing waits in epoll).
 * Written one by one, every yamux frame (and before that, its 12-byte header and its body separately) became a
 * TLS record, an encryption and a socket write of its own; a proxied request is six frames per side, and many
 * connections' frames land in one turn. Measured: a fifth to a third less CPU per proxied request through the
 * tunnel (docs/benchmarks.md). Bulk is kept out: a message past COALESCE_MAX, or a turn's gathering reaching it, is
 * written at once, behind what was gathered, so a stream never waits a turn behind its own data.
 *
 * What is gathered must be written before the connection ends. libp2p closes a connection by closing its muxer
 * (the last frames land here) and then the transport's stream directly, not this one, in the same turn: so both
 * closes flush first. Over pnet (the PSK's `stream` form) nothing is gathered here: pnet gathers a turn's writes
 * itself, and libp2p closes the stream beneath it.
 */
function secure(lib: TlsLib, connection: MessageStream, socket: TLSSocket): ReturnType<TlsLib['toMessageStream']> {
  const secured = lib.toMessageStream(connection, socket);
  // sendData and close are AbstractMessageStream's hooks, called on this: replaced on these instances.
  const hook = secured as unknown as {
    sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean };
    close(options?: AbortOptions): Promise<void>;
  };
  const perBuffer = hook.sendData.bind(secured);
  if (isPnetConnection(connection)) {
    hook.sendData = (data) => {
      if (data.byteLength <= COALESCE_MAX && severalBuffers(data)) return { sentBytes: data.byteLength, canSendMore: socket.write(data.subarray()) };
      return perBuffer(data);
    };
    return secured;
  }
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let scheduled = false;
  const flush = (): boolean => {
    if (pendingBytes === 0) return !socket.writableNeedDrain;
    const out = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    // A destroyed socket has lost the connection already; writing would only raise a second error.
    return socket.destroyed ? false : socket.write(out);
  };
  const flushLater = (): void => {
    scheduled = false;
    flush();
  };
  hook.sendData = (data) => {
    const n = data.byteLength;
    if (n > COALESCE_MAX) {
      flush();
      return perBuffer(data);
    }
    // The list's buffers themselves (a yamux frame is a header and a body): flush() copies them once, together.
    // libp2p never reuses a buffer it has sent.
    for (const b of data) pending.push(b);
    pendingBytes += n;
    if (pendingBytes >= GATHER_MAX) return { sentBytes: n, canSendMore: flush() };
    if (!scheduled) {
      scheduled = true;
      setImmediate(flushLater);
    }
    return { sentBytes: n, canSendMore: !socket.writableNeedDrain };
  };
  const closeSecured = hook.close.bind(secured);
  hook.close = (options) => {
    flush();
    return closeSecured(options);
  };
  const closeTransport = connection.close.bind(connection);
  connection.close = (options) => {
    flush(); // node:tls encrypts and hands the record to the transport synchronously, ahead of its close
    return closeTransport(options);
  };
  return secured;
}

function severalBuffers(data: Uint8ArrayList): boolean {
  let n = 0;
  for (const _ of data) if (++n > 1) return true;
  return false;
}

/** A libp2p `connectionEncrypters` entry; `psk` turns on the admission proof for connections without pnet. */
export function bunTls(psk: TlsPsk | null = null): (components: TlsComponents) => ConnectionEncrypter {
  return (components) => new BunTls(components, psk);
}
