/**
 * tunnel/ — the node's identity: its libp2p key, kept in the state directory.
 *
 * The original derives each node's private key from its node name (MD5 of the name seeds Go's math/rand, whose
 * output is the Ed25519 seed), so anyone who knows a name can
 * impersonate that node. Here a node generates an Ed25519 key once and keeps it, mode 0600, in its state
 * directory; its peer ID is then bound to its node name through the catalog. The key is never regenerated
 * silently: a new key is a new peer ID, which the binding would then reject.
 *
 *   const id = await loadOrCreateIdentity('/var/lib/edgemesh', logger)
 *   id.peerId   // '12D3KooW…'
 */
import { chmod, link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { EdgeMeshError, describeError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';

export const IDENTITY_FILE = 'identity.key';
const HEADER = 'edgemesh-identity-v1';

export interface NodeIdentity {
  privateKey: PrivateKey;
  peerId: string;
  path: string;
  created: boolean;
}

/** The file: a header line, then the libp2p protobuf encoding of the private key in base64. */
export function encodeIdentity(key: PrivateKey): string {
  return `${HEADER}\n${Buffer.from(privateKeyToProtobuf(key)).toString('base64')}\n`;
}

export function decodeIdentity(text: string, path: string): PrivateKey {
  const [header, body] = text.split('\n');
  const fail = (why: string): never => {
    throw new EdgeMeshError('STATE_DIR', `${path} is not a usable identity (${why}). It is not replaced automatically: this node's peer ID is bound to its name. Restore it from a backup, or delete it to create a new identity and then update the binding (docs/security.md)`);
  };
  if (header !== HEADER) fail(`first line is not "${HEADER}"`);
  if (!body || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) fail('the key is not base64');
  try {
    const key = privateKeyFromProtobuf(Buffer.from(body!, 'base64'));
    if (key.type !== 'Ed25519') fail(`the key is ${key.type}, not Ed25519`);
    return key;
  } catch (err) {
    if (err instanceof EdgeMeshError) throw err;
    return fail(describeError(err));
  }
}

export async function loadOrCreateIdentity(stateDir: string, logger: Logger): Promise<NodeIdentity> {
  const path = join(stateDir, IDENTITY_FILE);
  let text: string | null = null;
  try {
    const st = await stat(path);
    if (st.mode & 0o077) {
      // Readable by others: tighten it and say so, rather than refuse to start a node over it.
      await chmod(path, 0o600);
      logger.warn('the identity key was readable by other users; its mode is now 0600', { path });
    }
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new EdgeMeshError('STATE_DIR', `cannot read ${path}: ${describeError(err)}`);
  }
  if (text !== null) {
    const privateKey = decodeIdentity(text, path);
    return { privateKey, peerId: peerIdFromPrivateKey(privateKey).toString(), path, created: false };
  }
  const privateKey = await generateKeyPair('Ed25519');
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // Written whole to a private temporary file, then linked into place: link() fails with EEXIST when another
  // process won the race, and a reader never sees a half-written identity (open('wx') then write would show it
  // an empty file, which it must refuse as damaged).
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(encodeIdentity(privateKey));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await link(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return loadOrCreateIdentity(stateDir, logger);
    throw new EdgeMeshError('STATE_DIR', `cannot write ${path}: ${describeError(err)}; set commonConfig.stateDir to a writable directory`);
  } finally {
    await unlink(tmp).catch(() => {});
  }
  const peerId = peerIdFromPrivateKey(privateKey).toString();
  logger.info('created this node\'s identity', { path, peerId });
  return { privateKey, peerId, path, created: true };
}
