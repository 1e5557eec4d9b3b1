/** The node identity and the pre-shared key. */
import { describe, expect, test } from 'bun:test';
import { chmodSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EdgeMeshError } from '../src/errors.ts';
import { createMemoryLogger } from '../src/obs/logger.ts';
import { IDENTITY_FILE, loadOrCreateIdentity } from '../src/tunnel/identity.ts';
import { derivePsk, loadPsk, pskDocument } from '../src/tunnel/psk.ts';
import { runCli, tempDir, writeAgentConfig } from './helpers.ts';

describe('node identity', () => {
  test('created once with mode 0600, the same peer ID on every load, never silently replaced', async () => {
    const t = tempDir();
    try {
      const log = createMemoryLogger();
      const a = await loadOrCreateIdentity(t.path, log);
      expect(a.created).toBe(true);
      expect(a.peerId).toMatch(/^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/);
      expect(statSync(a.path).mode & 0o777).toBe(0o600);
      const b = await loadOrCreateIdentity(t.path, log);
      expect(b.created).toBe(false);
      expect(b.peerId).toBe(a.peerId);
      // Concurrent first starts agree on one identity, and none of them reads it half-written (repeated: the
      // window is small, and CI once caught a reader that saw the file empty).
      for (let round = 0; round < 20; round++) {
        const u = tempDir();
        try {
          const all = await Promise.all(Array.from({ length: 6 }, () => loadOrCreateIdentity(u.path, log)));
          expect(new Set(all.map((x) => x.peerId)).size).toBe(1);
          expect(all.filter((x) => x.created).length).toBe(1);
          expect(readdirSync(u.path)).toEqual([IDENTITY_FILE]);
        } finally {
          u.cleanup();
        }
      }
      // Too open: tightened, with a warning.
      chmodSync(a.path, 0o644);
      await loadOrCreateIdentity(t.path, log);
      expect(statSync(a.path).mode & 0o777).toBe(0o600);
      expect(log.lines.join('\n')).toContain('its mode is now 0600');
      // Damaged: a clear error, and the file is left alone.
      writeFileSync(join(t.path, IDENTITY_FILE), 'edgemesh-identity-v1\nnot-base64!!\n');
      await expect(loadOrCreateIdentity(t.path, log)).rejects.toThrow('It is not replaced automatically');
      writeFileSync(join(t.path, IDENTITY_FILE), 'something else\n');
      await expect(loadOrCreateIdentity(t.path, log)).rejects.toThrow('first line is not');
    } finally {
      t.cleanup();
    }
  });

  test('`edgemesh identity` prints the node name and peer ID, the same each time', async () => {
    const t = tempDir();
    try {
      const cfg = await writeAgentConfig(t.path, '');
      const a = JSON.parse((await runCli(['identity', '--json', '--config', cfg.path], { env: { NODE_NAME: 'edge-7' } })).stdout);
      const b = JSON.parse((await runCli(['identity', '--json', '--config', cfg.path], { env: { NODE_NAME: 'edge-7' } })).stdout);
      expect(a).toMatchObject({ nodeName: 'edge-7', created: true });
      expect(b).toMatchObject({ nodeName: 'edge-7', created: false, peerId: a.peerId });
    } finally {
      t.cleanup();
    }
  });
});

describe('pre-shared key', () => {
  // The sample key the original ships in its manifests.
  const sample = new TextEncoder().encode('JugH9HP1XBouyO5pWGeZa8LtipDURrf17EJvUHcJGuQ=');

  test('the original derivation: base64Decode(hex(sha256(file)))[0:32], and the v1 document around it', () => {
    const key = derivePsk(sample);
    expect(key.length).toBe(32);
    // Regression vector, computed once from the original's formula: base64Decode(hex(sha256(file)))[0:32].
    expect(Buffer.from(key).toString('hex')).toBe(SAMPLE_KEY_HEX);
    const doc = new TextDecoder().decode(pskDocument(sample)).split('\n');
    expect(doc.slice(0, 2)).toEqual(['/key/swarm/psk/1.0.0/', '/base64/']);
    expect(Buffer.from(doc[2]!, 'base64').subarray(0, 32)).toEqual(Buffer.from(key));
    // Exact bytes matter: a trailing newline is a different key (as on Go nodes).
    expect(Buffer.from(derivePsk(new TextEncoder().encode('JugH9HP1XBouyO5pWGeZa8LtipDURrf17EJvUHcJGuQ=\n'))).toString('hex')).not.toBe(SAMPLE_KEY_HEX);
  });

  test('missing and empty files say what to do', async () => {
    const t = tempDir();
    try {
      await expect(loadPsk(join(t.path, 'psk'))).rejects.toThrow('edgemesh psk generate --out');
      writeFileSync(join(t.path, 'empty'), '');
      await expect(loadPsk(join(t.path, 'empty'))).rejects.toThrow('is empty');
      const own = new TextEncoder().encode('3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n');
      writeFileSync(join(t.path, 'psk'), own, { mode: 0o600 });
      expect(await loadPsk(join(t.path, 'psk'))).toEqual(derivePsk(own));
    } finally {
      t.cleanup();
    }
  });

  test('the sample key the original publishes is refused by name, with or without a newline', async () => {
    const t = tempDir();
    try {
      for (const text of ['JugH9HP1XBouyO5pWGeZa8LtipDURrf17EJvUHcJGuQ=', 'JugH9HP1XBouyO5pWGeZa8LtipDURrf17EJvUHcJGuQ=\n']) {
        writeFileSync(join(t.path, 'psk'), text, { mode: 0o600 });
        const err = await loadPsk(join(t.path, 'psk')).then(() => null, (e: EdgeMeshError) => e);
        expect(err?.code).toBe('CONFIG_INVALID');
        expect(err?.message).toContain('sample key published in the original');
        expect(err?.message).toContain('edgemesh psk generate --out');
      }
    } finally {
      t.cleanup();
    }
  });

  test('a world-writable key file is refused; a readable one is tightened to 0600 with a warning', async () => {
    const t = tempDir();
    try {
      const f = join(t.path, 'psk');
      writeFileSync(f, 'a-key-of-our-own\n');
      chmodSync(f, 0o666);
      await expect(loadPsk(f)).rejects.toThrow('writable by every user (mode 666)');
      chmodSync(f, 0o644);
      const log = createMemoryLogger('warn');
      expect(await loadPsk(f, log)).toEqual(derivePsk(new TextEncoder().encode('a-key-of-our-own\n')));
      expect(statSync(f).mode & 0o777).toBe(0o600);
      expect(log.lines.join('\n')).toContain('readable by other users; its mode is now 0600');
    } finally {
      t.cleanup();
    }
  });
});

// base64Decode("701f220b…" = hex(sha256(sample)))[0:32]; by hand: "701f" decodes to ef 4d 5f.
const SAMPLE_KEY_HEX = 'ef4d5fdb6d1b75ad1b7bc79a7b7f5e69ed77ddfdf8ddee3579de5bf35d1b7bdd';

describe('Noise key agreement (X25519 on node:crypto)', () => {
  test('key pairs and shared secrets equal the pure-JS reference; a low-order public key is refused', async () => {
    const { noiseCrypto } = await import('../src/tunnel/security/noise.ts');
    const { pureJsCrypto } = await import('@chainsafe/libp2p-noise/crypto');
    const crypto = await noiseCrypto('noble').load();
    for (let i = 0; i < 20; i++) {
      const a = crypto.generateX25519KeyPair();
      const b = pureJsCrypto.generateX25519KeyPair();
      expect(Buffer.from(crypto.generateX25519KeyPairFromSeed(a.privateKey).publicKey)).toEqual(Buffer.from(pureJsCrypto.generateX25519KeyPairFromSeed(a.privateKey).publicKey));
      // Both sides of an exchange, one on each implementation, reach the same secret.
      const ours = Buffer.from(crypto.generateX25519SharedKey(a.privateKey, b.publicKey));
      expect(ours).toEqual(Buffer.from(pureJsCrypto.generateX25519SharedKey(b.privateKey, a.publicKey)));
    }
    // Noise hands the peer's key over as it came off the wire: a Uint8ArrayList of pieces.
    const { Uint8ArrayList } = await import('uint8arraylist');
    const a = crypto.generateX25519KeyPair(), b = crypto.generateX25519KeyPair();
    const pieces = new Uint8ArrayList(b.publicKey.subarray(0, 5), b.publicKey.subarray(5));
    expect(Buffer.from(crypto.generateX25519SharedKey(a.privateKey, pieces as unknown as Uint8Array))).toEqual(Buffer.from(pureJsCrypto.generateX25519SharedKey(b.privateKey, a.publicKey)));
    const k = crypto.generateX25519KeyPair();
    expect(() => crypto.generateX25519SharedKey(k.privateKey, new Uint8Array(32))).toThrow();
    expect(() => crypto.generateX25519SharedKey(k.privateKey, new Uint8Array(31))).toThrow();
  });

  test('the AEAD is checked against RFC 8439: libsodium and the pure-JS one pass, a wrong one is refused', async () => {
    const { aeadPassesVector, noiseCrypto } = await import('../src/tunnel/security/noise.ts');
    const { pureJsCrypto } = await import('@chainsafe/libp2p-noise/crypto');
    expect(aeadPassesVector(pureJsCrypto)).toBe(true);
    const auto = noiseCrypto('auto');
    if (auto.aead === 'libsodium') expect(aeadPassesVector(await auto.load())).toBe(true);
    else expect(auto.fallbackReason).not.toBe('');
    // A cipher that seals with another key, and one that opens forgeries, both fail.
    const other = { ...pureJsCrypto, chaCha20Poly1305Encrypt: (p: Uint8Array, n: Uint8Array, a: Uint8Array, k: Uint8Array) => pureJsCrypto.chaCha20Poly1305Encrypt(p, n, a, k.map((b) => b ^ 1)) };
    expect(aeadPassesVector(other as typeof pureJsCrypto)).toBe(false);
    const lax = { ...pureJsCrypto, chaCha20Poly1305Decrypt: (c: Uint8Array) => c.subarray(0, c.length - 16) };
    expect(aeadPassesVector(lax as unknown as typeof pureJsCrypto)).toBe(false);
  });
});
