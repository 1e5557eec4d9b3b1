#!/usr/bin/env bun
/**
 * Build one standalone binary with `bun build --compile`.
 *   bun scripts/build.ts                              → dist/edgemesh (host)
 *   bun scripts/build.ts --target=bun-linux-arm64     → dist/edgemesh-linux-arm64
 *   bun scripts/build.ts --plain                      → no minify/bytecode (for start-up comparisons)
 * Minify + bytecode (needs ESM output) cut start-up time; see docs/benchmarks.md for the measured difference.
 * The arm64 runtime is fetched from the npm registry by Bun on first use.
 */
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dir, '..');
const args = process.argv.slice(2);
const target = args.find((a) => a.startsWith('--target='))?.slice('--target='.length);
const plain = args.includes('--plain');
const outArg = args.find((a) => a.startsWith('--outfile='))?.slice('--outfile='.length);
const outfile = outArg ?? join(root, 'dist', target ? `edgemesh-${target.replace(/^bun-/, '').replace(/-modern|-baseline/, '')}` : 'edgemesh');

let commit = 'unknown';
const git = Bun.spawnSync(['git', 'rev-parse', '--short=12', 'HEAD'], { cwd: root, stderr: 'ignore' });
if (git.exitCode === 0) commit = git.stdout.toString().trim();
const dirty = Bun.spawnSync(['git', 'status', '--porcelain', '--untracked-files=no'], { cwd: root, stderr: 'ignore' });
if (dirty.exitCode === 0 && dirty.stdout.toString().trim()) commit += '-dirty';

const cmd = [
  // The splice worker is a second entrypoint: Bun bundles a Worker's file into the binary only when listed.
  process.execPath, 'build', join(root, 'src/cli/main.ts'), join(root, 'src/proxy/splice-worker.ts'),
  '--compile', '--format=esm', '--splitting',
  ...(plain ? [] : ['--minify', '--bytecode']),
  ...(target ? [`--target=${target}`] : []),
  `--define`, `EDGEMESH_COMMIT=${JSON.stringify(commit)}`,
  '--outfile', outfile,
];
process.stderr.write(`building ${outfile} (${target ?? 'host'}${plain ? ', plain' : ', minify+bytecode'}, commit ${commit})\n`);
const t0 = performance.now();
const r = Bun.spawnSync(cmd, { cwd: root, stdout: 'inherit', stderr: 'inherit' });
if (r.exitCode !== 0) {
  process.stderr.write(`build failed (exit ${r.exitCode}); for arm64 Bun must download its arm64 runtime from the npm registry\n`);
  process.exit(1);
}
const size = Bun.file(outfile).size;
process.stderr.write(`built ${outfile}: ${(size / 1024 / 1024).toFixed(1)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
