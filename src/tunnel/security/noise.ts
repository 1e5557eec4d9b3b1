/**
 * tunnel/ — the Noise handshake (/noise, XX with the node's Ed25519 identity) with crypto that works on Bun.
 *
 * Why Noise first and TLS second: on Bun, libp2p's TLS runs node:tls over a Node Duplex wrapped around the
 * libp2p connection, so every message crosses two Node stream stacks (measured: ~2.5 ms of CPU per proxied
 * stream open between two processes, most of it in the stream machinery). Noise frames messages itself and only
 * needs an AEAD per frame. Bun has no ChaCha20-Poly1305 in node:crypto or WebCrypto (Noise's default crypto
 * fails on the first frame of 1,200 bytes or more), so the AEAD comes from libsodium through bun:ffi when the
 * host has it, else from @noble/ciphers (pure JS, slower, always there). SHA-256 is node:crypto's (native in
 * Bun); HKDF and X25519 run only during the handshake and use the pure-JS implementations.
 */
import { noise } from '@chainsafe/libp2p-noise';
import { pureJsCrypto } from '@chainsafe/libp2p-noise/crypto';
import type { ConnectionEncrypter } from '@libp2p/interface';
import { InvalidCryptoExchangeError } from '@libp2p/interface';
import { createHash } from 'node:crypto';
import { sodium } from './cipher.ts';
import { isPnetConnection } from './pnet.ts';

type ICryptoInterface = NonNullable<Parameters<typeof noise>[0]>['crypto'] & object;

const TAG = 16;

/** Noise passes plain arrays or (its own version of) Uint8ArrayList; both have subarray(). */
const flat = (d: Uint8Array | { subarray(): Uint8Array }): Uint8Array => (d instanceof Uint8Array ? d : d.subarray());

export interface NoiseCrypto {
  crypto: ICryptoInterface;
  aead: 'libsodium' | 'noble';
  fallbackReason: string;
}

/** libsodium's ChaCha20-Poly1305 when loadable ('auto'/'libsodium'), else the pure-JS one. */
export function noiseCrypto(choice: 'auto' | 'libsodium' | 'noble'): NoiseCrypto {
  const base: ICryptoInterface = {
    ...pureJsCrypto,
    hashSHA256(data) {
      const h = createHash('sha256');
      if (data instanceof Uint8Array) h.update(data);
      else for (const b of data) h.update(b);
      return new Uint8Array(h.digest());
    },
  };
  if (choice === 'noble') return { crypto: base, aead: 'noble', fallbackReason: '' };
  const s = sodium();
  if ('error' in s) return { crypto: base, aead: 'noble', fallbackReason: `libsodium not loadable (${s.error})` };
  const enc = s.lib.crypto_aead_chacha20poly1305_ietf_encrypt;
  const dec = s.lib.crypto_aead_chacha20poly1305_ietf_decrypt;
  // libsodium reads a NULL ad pointer as "no additional data"; an empty Uint8Array would pass a dangling pointer.
  const adPtr = (ad: Uint8Array): Uint8Array | null => (ad.length ? ad : null);
  const crypto: ICryptoInterface = {
    ...base,
    chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
      const m = flat(plaintext);
      const out = new Uint8Array(m.length + TAG);
      enc(out, null, m.length ? m : null, m.length, adPtr(ad), ad.length, null, nonce, k);
      return out;
    },
    chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
      const c = flat(ciphertext);
      if (c.length < TAG) throw new Error('Invalid chacha20poly1305 ciphertext: too short');
      const out = dst && dst.length >= c.length - TAG ? dst.subarray(0, c.length - TAG) : new Uint8Array(c.length - TAG);
      // The output buffer must be non-empty for a valid pointer; a 0-byte plaintext decrypts into a scratch byte.
      const target = out.length ? out : new Uint8Array(1);
      if (dec(target, null, null, c, c.length, adPtr(ad), ad.length, nonce, k) !== 0) throw new Error('Invalid chacha20poly1305 tag: message forged or corrupted');
      return out;
    },
  };
  // Check against the reference before trusting it.
  const k = new Uint8Array(32).map((_, i) => i + 1);
  const n = new Uint8Array(12).map((_, i) => i * 3);
  const ad = new Uint8Array([1, 2, 3]);
  const msg = new Uint8Array(1500).map((_, i) => i & 0xff);
  const a = flat(crypto.chaCha20Poly1305Encrypt(msg, n, ad, k));
  const b = flat(base.chaCha20Poly1305Encrypt(msg, n, ad, k));
  const back = flat(crypto.chaCha20Poly1305Decrypt(b, n, ad, k));
  if (a.length !== b.length || a.some((v, i) => v !== b[i]) || back.some((v, i) => v !== msg[i])) {
    return { crypto: base, aead: 'noble', fallbackReason: 'libsodium ChaCha20-Poly1305 disagreed with the reference implementation' };
  }
  return { crypto, aead: 'libsodium', fallbackReason: '' };
}

/**
 * `requirePnet`: the PSK is on. Noise here has no channel binding to carry the PSK's handshake-form proof
 * (psk-admission.ts), so it only runs over pnet connections and refuses the others (fail closed).
 */
export function noiseEncrypter(c: NoiseCrypto, requirePnet = false): ReturnType<typeof noise> {
  const factory = noise({ crypto: c.crypto }) as ReturnType<typeof noise> & ((components: never) => ConnectionEncrypter);
  if (!requirePnet) return factory;
  return ((components: never) => {
    const e = factory(components) as ConnectionEncrypter;
    for (const m of ['secureInbound', 'secureOutbound'] as const) {
      const inner = e[m].bind(e);
      e[m] = ((conn: Parameters<typeof inner>[0], opts?: Parameters<typeof inner>[1]) => {
        if (!isPnetConnection(conn)) return Promise.reject(new InvalidCryptoExchangeError('Noise without the pnet layer cannot prove the pre-shared key; use /tls/1.0.0 or psk.mode "stream"'));
        return inner(conn, opts);
      }) as typeof e[typeof m];
    }
    return e;
  }) as ReturnType<typeof noise>;
}
