/**
 * The tunnel's pre-shared key (a private network: peers without it cannot connect at all).
 *
 * Derivation of the original (docs/security.md), so a key file works for Go and TypeScript nodes alike: the file's exact
 * bytes are hashed with SHA-256, the lowercase hex of the hash is put into a libp2p "v1 PSK" document with the
 * base64 encoding, and libp2p base64-decodes that hex text and keeps the first 32 bytes:
 *   key = base64Decode(hex(sha256(file)))[0:32]
 * `edgemesh psk generate --out /etc/edgemesh/psk` writes a new random file.
 *
 * Handled like the identity key: the sample key the original's manifests publish is refused by name (everyone
 * has it); a file any user may write is refused (anyone could replace the key); a file others may read is
 * tightened to 0600, or, where that is impossible (a read-only Secret or ConfigMap mount), reported with the fix.
 */
import { createHash } from 'node:crypto';
import { chmod, readFile, stat } from 'node:fs/promises';
import { EdgeMeshError, describeError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';

/** The key the original's manifests and docs ship; a mesh using it is open to everyone who read them. */
export const PUBLISHED_SAMPLE_PSK = 'JugH9HP1XBouyO5pWGeZa8LtipDURrf17EJvUHcJGuQ=';

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

export async function loadPsk(path: string, logger?: Logger): Promise<Uint8Array> {
  let file: Uint8Array;
  let mode: number;
  try {
    file = new Uint8Array(await readFile(path));
    mode = (await stat(path)).mode & 0o777;
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path}: ${missing ? 'no such file' : describeError(err)}; create one with "edgemesh psk generate --out ${path}" and copy it to every node, or set modules.edgeTunnel.psk.enable: false`);
  }
  if (file.length === 0) throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path} is empty; every node needs the same non-empty key file ("edgemesh psk generate --out ${path}")`);
  if (new TextDecoder().decode(file).trim() === PUBLISHED_SAMPLE_PSK) {
    throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path} holds the sample key published in the original's manifests (${PUBLISHED_SAMPLE_PSK.slice(0, 8)}…): anyone can join a mesh using it; generate a key with "edgemesh psk generate --out ${path} --force" and copy the file to every node`);
  }
  if (mode & 0o002) {
    throw new EdgeMeshError('CONFIG_INVALID', `modules.edgeTunnel.psk.path: ${path} is writable by every user (mode ${mode.toString(8)}): anyone on this node could replace the key; run "chmod 600 ${path}"`);
  }
  if (mode & 0o077) {
    try {
      await chmod(path, 0o600);
      logger?.warn('the pre-shared key file was readable by other users; its mode is now 0600', { path, was: mode.toString(8) });
    } catch (err) {
      logger?.warn('the pre-shared key file is readable by other users and its mode cannot be changed here; mount it with mode 0400 (a Secret volume\'s defaultMode) or chmod 600 it', { path, mode: mode.toString(8), error: describeError(err) });
    }
  }
  return derivePsk(file);
}
