/**
 * The tunnel's pre-shared key (a private network: peers without it cannot connect at all).
 *
 * Derivation of the original (docs/security.md), so a key file works for Go and TypeScript nodes alike: the file's exact
 * bytes are hashed with SHA-256, the lowercase hex of the hash is put into a libp2p "v1 PSK" document with the
 * base64 encoding, and libp2p base64-decodes that hex text and keeps the first 32 bytes:
 *   key = base64Decode(hex(sha256(file)))[0:32]
 * `edgemesh psk generate --out /etc/edgemesh/psk` writes a new random file.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { EdgeMeshError, describeError } from '../errors.ts';

/** The libp2p v1 PSK document the original builds from the file (what @libp2p/pnet's preSharedKey takes). */
export function pskDocument(file: Uint8Array): Uint8Array {
  const hex = createHash('sha256').update(file).digest('hex');
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base64/\n${hex}`);
}

/** The 32-byte key a Go node derives from the same file. */
export function derivePsk(file: Uint8Array): Uint8Array {
  const hex = createHash('sha256').update(file).digest('hex');
  return new Uint8Array(Buffer.from(hex, 'base64').subarray(0, 32));
}

export async function loadPsk(path: string): Promise<Uint8Array> {
  let file: Uint8Array;
  try {
    file = new Uint8Array(await readFile(path));
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path}: ${missing ? 'no such file' : describeError(err)}; create one with "edgemesh psk generate --out ${path}" and copy it to every node, or set modules.edgeTunnel.psk.enable: false`);
  }
  if (file.length === 0) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path} is empty; every node needs the same non-empty key file ("edgemesh psk generate --out ${path}")`);
  return derivePsk(file);
}
