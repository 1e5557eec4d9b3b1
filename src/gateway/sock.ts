/**
 * gateway/ — the client connection as an exchange (server.ts) drives it, plain (a Bun socket) or TLS (tls.ts).
 */

/** Bun's Socket has all of it; TLS connections are adapted. */
export interface ClientSock {
  /** Bytes taken; fewer: keep the rest and wait for onDrain. */
  write(b: Uint8Array): number;
  pause(): void;
  resume(): void;
  /** Close once written. */
  end(): void;
  /** FIN after what is written; reading goes on. */
  shutdown(): void;
  /** Reset. */
  terminate(): void;
}
