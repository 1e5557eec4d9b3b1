/**
 * tunnel/ — the Noise handshake (/noise, XX with the node's Ed25519 identity) with crypto that works on Bun.
 *
 * Why Noise first and TLS second: on Bun, libp2p's TLS runs node:tls over a Node Duplex wrapped around the
 * libp2p connection, so every message crosses two Node stream stacks (measured: ~2.5 ms of CPU per proxied
 * stream open between two processes, most of it in the stream machinery). Noise frames messages itself and only
 * needs an AEAD per frame. Bun has no ChaCha20-Poly1305 in node:crypto or WebCrypto (Noise's default crypto
 * fails on the first frame of 1,200 bytes or more), so the AEAD comes from libsodium through bun:ffi when the
 * host has it, else from @noble/ciphers (pure JS, slower, always there). SHA-256 and X25519 are node:crypto's
 * (native in Bun): the pure-JS X25519 cost ~35 ms of start-up (Noise makes its static key when the node is built,
 * and the first use builds noble's tables) and ~370 µs per Diffie-Hellman against ~45 µs native; HKDF runs only
 * during the handshake and stays pure JS.
 *
 * The Noise library and its pure-JS crypto are imported at the first Noise handshake, not at start: with TLS they
 * were half of the tunnel's ~55 ms import at start-up (compiled binary), and with the PSK on most nodes never use
 * Noise at all. Which AEAD runs is decided at start all the same (libsodium checked against RFC 8439's vector).
 */
import type { noise } from '@chainsafe/libp2p-noise';
import type { ConnectionEncrypter } from '@libp2p/interface';
import { InvalidCryptoExchangeError, serviceCapabilities } from '@libp2p/interface';
import { createHash, createPrivateKey, createPublicKey, diffieHellman, randomBytes } from 'node:crypto';
import { sodium } from './cipher.ts';
import { isPnetConnection } from './pnet.ts';

type ICryptoInterface = NonNullable<Parameters<typeof noise>[0]>['crypto'] & object;
type NoiseFactory = ReturnType<typeof noise>;
type NoiseComponents = Parameters<NoiseFactory>[0];

const TAG = 16;

/** Noise passes plain arrays or (its own version of) Uint8ArrayList; both have subarray(). */
const flat = (d: Uint8Array | { subarray(): Uint8Array }): Uint8Array => (d instanceof Uint8Array ? d : d.subarray());

/** DER prefixes of a raw 32-byte X25519 key: PKCS#8 private key, SPKI public key (RFC 8410). */
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI = Buffer.from('302a300506032b656e032100', 'hex');

const x25519Private = (k: Uint8Array) => createPrivateKey({ key: Buffer.concat([X25519_PKCS8, k]), format: 'der', type: 'pkcs8' });

/** The key pair for a private key: the private key as given (clamped inside each operation, as noble does). */
function x25519FromSeed(seed: Uint8Array): { publicKey: Uint8Array; privateKey: Uint8Array } {
  if (seed.length !== 32) throw new Error(`X25519 private key must be 32 bytes, got ${seed.length}`);
  const spki = createPublicKey(x25519Private(seed)).export({ format: 'der', type: 'spki' });
  return { publicKey: new Uint8Array(spki.subarray(spki.length - 32)), privateKey: new Uint8Array(seed) };
}

/**
 * Throws on a public key of low order (an all-zero shared secret), as the pure-JS one does. Noise passes the
 * peer's key as it came off the wire: an array or a Uint8ArrayList.
 */
function x25519Shared(privateKey: Uint8Array | { subarray(): Uint8Array }, peerKey: Uint8Array | { subarray(): Uint8Array }): Uint8Array {
  const publicKey = flat(peerKey);
  if (publicKey.length !== 32) throw new Error(`X25519 public key must be 32 bytes, got ${publicKey.length}`);
  const pub = createPublicKey({ key: Buffer.concat([X25519_SPKI, publicKey]), format: 'der', type: 'spki' });
  return new Uint8Array(diffieHellman({ privateKey: x25519Private(flat(privateKey)), publicKey: pub }));
}

type Aead = Pick<ICryptoInterface, 'chaCha20Poly1305Encrypt' | 'chaCha20Poly1305Decrypt'>;

export interface NoiseCrypto {
  aead: 'libsodium' | 'noble';
  fallbackReason: string;
  /** The crypto Noise runs on, built at the first call (it imports the pure-JS parts). */
  load(): Promise<ICryptoInterface>;
}

/** RFC 8439 §2.8.2: the AEAD test vector (key 80..9f, this nonce and AAD, the "sunscreen" plaintext). */
const KAT = {
  key: Uint8Array.from({ length: 32 }, (_, i) => 0x80 + i),
  nonce: Buffer.from('070000004041424344454647', 'hex'),
  ad: Buffer.from('50515253c0c1c2c3c4c5c6c7', 'hex'),
  plaintext: Buffer.from("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."),
  sealed: Buffer.from(
    'd31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0600691',
    'hex',
  ),
};

/** Whether an AEAD seals and opens RFC 8439's vector exactly (and refuses it with one bit changed). */
export function aeadPassesVector(a: Aead): boolean {
  try {
    const sealed = flat(a.chaCha20Poly1305Encrypt(KAT.plaintext, KAT.nonce, KAT.ad, KAT.key));
    if (!Buffer.from(sealed).equals(KAT.sealed)) return false;
    if (!Buffer.from(flat(a.chaCha20Poly1305Decrypt(KAT.sealed, KAT.nonce, KAT.ad, KAT.key))).equals(KAT.plaintext)) return false;
    const forged = Buffer.from(KAT.sealed);
    forged[forged.length - 1]! ^= 1;
    try {
      a.chaCha20Poly1305Decrypt(forged, KAT.nonce, KAT.ad, KAT.key);
      return false;
    } catch {
      return true;
    }
  } catch {
    return false;
  }
}

/** libsodium's ChaCha20-Poly1305 through bun:ffi, or why not. */
function sodiumAead(): Aead | { error: string } {
  const s = sodium();
  if ('error' in s) return { error: `libsodium not loadable (${s.error})` };
  const enc = s.lib.crypto_aead_chacha20poly1305_ietf_encrypt;
  const dec = s.lib.crypto_aead_chacha20poly1305_ietf_decrypt;
  // libsodium reads a NULL ad pointer as "no additional data"; an empty Uint8Array would pass a dangling pointer.
  const adPtr = (ad: Uint8Array): Uint8Array | null => (ad.length ? ad : null);
  const aead: Aead = {
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
  return aeadPassesVector(aead) ? aead : { error: 'libsodium ChaCha20-Poly1305 failed the RFC 8439 test vector' };
}

/** libsodium's ChaCha20-Poly1305 when loadable ('auto'/'libsodium'), else the pure-JS one. */
export function noiseCrypto(choice: 'auto' | 'libsodium' | 'noble'): NoiseCrypto {
  const fast = choice === 'noble' ? null : sodiumAead();
  const chosen = fast && !('error' in fast) ? fast : null;
  let built: Promise<ICryptoInterface> | null = null;
  const load = (): Promise<ICryptoInterface> =>
    (built ??= import('@chainsafe/libp2p-noise/crypto').then(({ pureJsCrypto }) => ({
      ...pureJsCrypto,
      generateX25519KeyPair: () => x25519FromSeed(randomBytes(32)),
      generateX25519KeyPairFromSeed: x25519FromSeed,
      generateX25519SharedKey: x25519Shared,
      hashSHA256(data) {
        const h = createHash('sha256');
        if (data instanceof Uint8Array) h.update(data);
        else for (const b of data) h.update(b);
        return new Uint8Array(h.digest());
      },
      ...(chosen ?? {}),
    })));
  return { aead: chosen ? 'libsodium' : 'noble', fallbackReason: fast && 'error' in fast ? fast.error : '', load };
}

/**
 * The /noise encrypter, its library imported at the first handshake (concurrent first handshakes share it).
 * `requirePnet`: the PSK is on. Noise here has no channel binding to carry the PSK's handshake-form proof
 * (psk-admission.ts), so it only runs over pnet connections and refuses the others (fail closed).
 */
class LazyNoise implements ConnectionEncrypter {
  readonly protocol = '/noise';
  readonly [Symbol.toStringTag] = '@chainsafe/libp2p-noise';
  readonly [serviceCapabilities] = ['@libp2p/connection-encryption', '@chainsafe/libp2p-noise'];
  private real: Promise<ConnectionEncrypter> | null = null;

  constructor(private readonly c: NoiseCrypto, private readonly components: NoiseComponents, private readonly requirePnet: boolean) {}

  secureInbound(...a: Parameters<ConnectionEncrypter['secureInbound']>): ReturnType<ConnectionEncrypter['secureInbound']> {
    return this.check(a[0]).then((e) => e.secureInbound(...a));
  }

  secureOutbound(...a: Parameters<ConnectionEncrypter['secureOutbound']>): ReturnType<ConnectionEncrypter['secureOutbound']> {
    return this.check(a[0]).then((e) => e.secureOutbound(...a));
  }

  private check(conn: Parameters<ConnectionEncrypter['secureInbound']>[0]): Promise<ConnectionEncrypter> {
    if (this.requirePnet && !isPnetConnection(conn)) return Promise.reject(new InvalidCryptoExchangeError('Noise without the pnet layer cannot prove the pre-shared key; use /tls/1.0.0 or psk.mode "stream"'));
    this.real ??= Promise.all([import('@chainsafe/libp2p-noise'), this.c.load()]).then(([lib, crypto]) => lib.noise({ crypto })(this.components) as ConnectionEncrypter);
    return this.real;
  }
}

export function noiseEncrypter(c: NoiseCrypto, requirePnet = false): NoiseFactory {
  return ((components: NoiseComponents) => new LazyNoise(c, components, requirePnet)) as unknown as NoiseFactory;
}
