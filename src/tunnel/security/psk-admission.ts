/**
 * tunnel/ — the PSK's "handshake" form: admission to the private network proven inside the TLS session instead
 * of XSalsa20 over every byte (pnet.ts has the other form and says why both exist).
 *
 * Once TLS 1.3 is up, each side sends HMAC-SHA256(psk, label ‖ role ‖ exporter), where the exporter is 32 bytes
 * of the session's keying material (RFC 8446 §7.5): unique to this session and known only to its two ends. The
 * dialer sends first; the listener answers only after checking it. Until both tags check out no muxer runs, so a
 * host without the PSK gets no further than the TLS handshake, as with pnet. What a proof cannot be used for:
 * replayed or relayed into another session (other exporter), reflected to its sender (the role is in the tag),
 * or turned into the key (HMAC; the key is 32 bytes from the PSK file, not a password).
 *
 *   await proveAdmission(socket, psk, isServer, signal); // throws PskAdmissionError on a mismatch
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

const TAG_LENGTH = 32;
const EXPORTER_LABEL = 'EXPORTER-edgemesh-psk-admission';
const TAG_LABEL = 'edgemesh psk admission v1 ';

/** The peer's tag did not match: it holds another PSK (or none). */
export class PskAdmissionError extends Error {
  override readonly name = 'PskAdmissionError';
}

function admissionTag(key: Uint8Array, exporter: Buffer, role: 'client' | 'server'): Buffer {
  return createHmac('sha256', key).update(TAG_LABEL + role).update(exporter).digest();
}

/**
 * Exchange and check the tags on an established TLS socket. On success the socket is paused with any bytes
 * that followed the peer's tag put back, so whoever attaches next (the muxer's stream) reads them first; the
 * caller resumes it.
 */
export async function proveAdmission(socket: TLSSocket, key: Uint8Array, isServer: boolean, signal?: AbortSignal): Promise<void> {
  const exporter = socket.exportKeyingMaterial(TAG_LENGTH, EXPORTER_LABEL, Buffer.alloc(0));
  const mine = admissionTag(key, exporter, isServer ? 'server' : 'client');
  const expected = admissionTag(key, exporter, isServer ? 'client' : 'server');
  if (!isServer) socket.write(mine);
  const theirs = await readExactly(socket, TAG_LENGTH, signal);
  if (!timingSafeEqual(theirs, expected)) throw new PskAdmissionError('the peer failed the PSK check: it holds a different pre-shared key');
  if (isServer) socket.write(mine);
}

function readExactly(socket: TLSSocket, n: number, signal?: AbortSignal): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
    };
    const onData = (d: Buffer): void => {
      chunks.push(d);
      have += d.length;
      if (have < n) return;
      cleanup();
      socket.pause();
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      if (all.length > n) socket.unshift(all.subarray(n));
      resolve(all.subarray(0, n));
    };
    const onEnd = (): void => {
      cleanup();
      reject(new PskAdmissionError(`the peer closed the connection during the PSK check (${have}/${n} bytes): it holds a different pre-shared key or none`));
    };
    const onError = (e: Error): void => {
      cleanup();
      reject(e);
    };
    const onAbort = (): void => {
      cleanup();
      reject(Object.assign(new Error('PSK check timed out'), { name: 'TimeoutError' }));
    };
    if (signal?.aborted) return onAbort();
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
