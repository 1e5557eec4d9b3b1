/** `edgemesh psk generate`: 32 random bytes, base64, the format the original's docs produce with openssl. */
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
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
  writeFileSync(o.out, key, { mode: 0o600 });
  process.stderr.write(`wrote a new pre-shared key to ${o.out} (mode 0600); copy the same file to every node\n`);
}
