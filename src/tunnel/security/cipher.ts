/**
 * tunnel/ — the XSalsa20 stream cipher of the libp2p private network (pnet), with more than one engine.
 *
 * The private-network layer XORs every byte of every connection with XSalsa20, so the engine sets the tunnel's
 * ceiling. Measured here: libsodium ~1,690 MB/s, the WASM of @libp2p/pnet 465 MB/s but dead after ~16 MiB, the
 * pure-JS @noble/ciphers ~330 MB/s. So: libsodium through bun:ffi when the host has it (Debian `libsodium23`),
 * else @noble/ciphers, which runs everywhere (arm64, the compiled binary, no shared libraries). The engine is
 * chosen once at start, checked against the other on a known input, and reported by `edgemesh status`.
 *
 *   const engine = chooseXSalsa20('auto');           // { name: 'libsodium' | 'noble', ... }
 *   const s = new XSalsa20Stream(engine, key, nonce);
 *   s.xor(chunk);                                      // in place, any chunk sizes, state carried across calls
 */
import { xsalsa20 as nobleXSalsa20 } from '@noble/ciphers/salsa.js';
import { EdgeMeshError } from '../../errors.ts';

/** XOR `data` in place with the keystream starting at 64-byte block `block`. */
export interface XSalsa20Engine {
  readonly name: 'libsodium' | 'noble';
  xorBlocks(key: Uint8Array, nonce: Uint8Array, data: Uint8Array, block: number): void;
}

const nobleEngine: XSalsa20Engine = {
  name: 'noble',
  xorBlocks(key, nonce, data, block) {
    nobleXSalsa20(key, nonce, data, data, block);
  },
};

const SODIUM_NAMES = ['libsodium.so.23', 'libsodium.so.26', 'libsodium.so'];

const SODIUM_SYMBOLS = {
  sodium_init: { args: [], returns: 'i32' },
  // int crypto_stream_xsalsa20_xor_ic(c, m, mlen, n, ic, k)
  crypto_stream_xsalsa20_xor_ic: { args: ['ptr', 'ptr', 'u64', 'ptr', 'u64', 'ptr'], returns: 'i32' },
  // int crypto_aead_chacha20poly1305_ietf_encrypt(c, clen_p, m, mlen, ad, adlen, nsec, npub, k)
  crypto_aead_chacha20poly1305_ietf_encrypt: { args: ['ptr', 'ptr', 'ptr', 'u64', 'ptr', 'u64', 'ptr', 'ptr', 'ptr'], returns: 'i32' },
  // int crypto_aead_chacha20poly1305_ietf_decrypt(m, mlen_p, nsec, c, clen, ad, adlen, npub, k)
  crypto_aead_chacha20poly1305_ietf_decrypt: { args: ['ptr', 'ptr', 'ptr', 'ptr', 'u64', 'ptr', 'u64', 'ptr', 'ptr'], returns: 'i32' },
} as const;

type SodiumLib = import('bun:ffi').Library<typeof SODIUM_SYMBOLS>['symbols'];
let sodiumCache: { lib: SodiumLib } | { error: string } | null = null;

/** libsodium through bun:ffi (loaded once), or the reason it is not available on this host. */
export function sodium(): { lib: SodiumLib } | { error: string } {
  if (sodiumCache) return sodiumCache;
  let ffi: typeof import('bun:ffi');
  try {
    ffi = require('bun:ffi') as typeof import('bun:ffi');
  } catch (e) {
    return (sodiumCache = { error: `bun:ffi unavailable: ${(e as Error).message}` });
  }
  const errors: string[] = [];
  for (const name of SODIUM_NAMES) {
    try {
      const lib = ffi.dlopen(name, SODIUM_SYMBOLS);
      if (lib.symbols.sodium_init() < 0) {
        errors.push(`${name}: sodium_init failed`);
        continue;
      }
      return (sodiumCache = { lib: lib.symbols });
    } catch (e) {
      errors.push(`${name}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  return (sodiumCache = { error: errors.join('; ') });
}

function sodiumEngine(): { engine: XSalsa20Engine } | { error: string } {
  const s = sodium();
  if ('error' in s) return s;
  const fn = s.lib.crypto_stream_xsalsa20_xor_ic;
  return {
    engine: {
      name: 'libsodium',
      xorBlocks(key, nonce, data, block) {
        if (data.length === 0) return;
        fn(data, data, data.length, nonce, block, key);
      },
    },
  };
}

/** Both engines must produce the same bytes, including across a block boundary in the middle of a call. */
function agrees(engine: XSalsa20Engine): boolean {
  const key = new Uint8Array(32).map((_, i) => i * 7 + 1);
  const nonce = new Uint8Array(24).map((_, i) => 200 - i);
  const a = new Uint8Array(300).map((_, i) => i & 0xff);
  const b = a.slice();
  engine.xorBlocks(key, nonce, a.subarray(64), 1);
  nobleEngine.xorBlocks(key, nonce, b.subarray(64), 1);
  return a.every((v, i) => v === b[i]);
}

export type CipherChoice = 'auto' | 'libsodium' | 'noble';

export interface ChosenEngine {
  engine: XSalsa20Engine;
  /** Why a faster engine was not used (empty when the first choice worked). */
  fallbackReason: string;
}

/** Pick the engine once at start. 'libsodium' demands it (error if missing); 'auto' falls back to noble. */
export function chooseXSalsa20(choice: CipherChoice): ChosenEngine {
  if (choice === 'noble') return { engine: nobleEngine, fallbackReason: '' };
  const s = sodiumEngine();
  if ('engine' in s && agrees(s.engine)) return { engine: s.engine, fallbackReason: '' };
  const reason = 'engine' in s ? 'libsodium disagreed with the reference implementation' : `libsodium not loadable (${s.error})`;
  if (choice === 'libsodium') throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.cipher: "libsodium" was asked for but ${reason}; install libsodium23 or use "auto"`);
  return { engine: nobleEngine, fallbackReason: reason };
}

/**
 * One direction of a pnet connection: the keystream position carries across calls of any size. A call that
 * starts inside a 64-byte block finishes that block from a cached keystream block first, so the engine is
 * always called on block boundaries.
 */
export class XSalsa20Stream {
  private pos = 0; // bytes of keystream used so far
  private readonly partial = new Uint8Array(64); // keystream of the block `pos` is in, when pos % 64 != 0

  constructor(private readonly engine: XSalsa20Engine, private readonly key: Uint8Array, private readonly nonce: Uint8Array) {}

  xor(data: Uint8Array): void {
    let off = 0;
    const inBlock = this.pos & 63;
    if (inBlock !== 0) {
      const n = Math.min(64 - inBlock, data.length);
      for (let i = 0; i < n; i++) data[i]! ^= this.partial[inBlock + i]!;
      off = n;
      this.pos += n;
    }
    const rest = data.length - off;
    if (rest === 0) return;
    this.engine.xorBlocks(this.key, this.nonce, off === 0 ? data : data.subarray(off), Math.floor(this.pos / 64));
    this.pos += rest;
    if (this.pos & 63) {
      // The call ended inside a block: keep that block's keystream for the next call.
      this.partial.fill(0);
      this.engine.xorBlocks(this.key, this.nonce, this.partial, Math.floor(this.pos / 64));
    }
  }
}
