/** `edgemesh version`. */
import { COMMIT, VERSION } from '../version.ts';

export function versionInfo(): { version: string; commit: string; bun: string; os: string; arch: string } {
  return { version: VERSION, commit: COMMIT, bun: Bun.version, os: process.platform, arch: process.arch };
}

export function printVersion(o: { json?: boolean }): void {
  const v = versionInfo();
  process.stdout.write(o.json ? JSON.stringify(v) + '\n' : `edgemesh ${v.version} (commit ${v.commit}, bun ${v.bun}, ${v.os}/${v.arch})\n`);
}
