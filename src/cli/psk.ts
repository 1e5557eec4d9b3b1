/** `edgemesh psk generate`: 32 random bytes, base64, the format the original's docs produce with openssl. */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { EdgeMeshError } from '../errors.ts';

export function pskGenerate(o: { out?: string; force?: boolean }): void {
  const key = randomBytes(32).toString('base64') + '\n';
  if (!o.out) {
    process.stdout.write(key);
    return;
  }
  if (existsSync(o.out) && !o.force) {
    throw new EdgeMeshError('USAGE', `${o.out} exists; every node must share one key, so it is not overwritten (use --force to replace it)`);
  }
  // Through a new file (created 0600) renamed over the old one: a replaced key never inherits the old file's
  // mode, and a crash leaves the old key or the new one, never half of one.
  const tmp = `${o.out}.${process.pid}.tmp`;
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, key);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, o.out);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new EdgeMeshError('FILE_WRITE', `cannot write ${o.out}: ${(err as Error).message}; check that its folder exists and is writable`);
  }
  process.stderr.write(`wrote a new pre-shared key to ${o.out} (mode 0600); copy the same file to every node\n`);
}
