#!/usr/bin/env bun
/**
 * cli/ — the `edgemesh` command. One file per command; this file only wires them into commander and maps
 * errors to exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
 *
 *   edgemesh agent --catalog ./catalog.yaml --node-name edge-1
 */
import { EXAMPLE_CATALOG } from '../catalog/example.ts';
import { Command, CommanderError } from 'commander';
import { EdgeMeshError, describeError, exitCodeFor } from '../errors.ts';
import { VERSION } from '../version.ts';
import type { BenchOptions } from './bench.ts';

// Each command's module is imported when that command runs: `version`, `status` or `config check` must not load
// the agent (libp2p, the Kubernetes client, the data paths): in the compiled binary that took 120 ms and 65 MiB.

export function buildProgram(): Command {
  const program = new Command('edgemesh')
    .description('Edge service mesh data plane: node-local DNS, ClusterIP proxy, libp2p tunnel and gateway in one binary')
    .version(VERSION, '-V, --version-flag', 'print the version number')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('agent')
    .description('run the node agent (catalog, admin server; DNS, proxy and tunnel as they arrive)')
    .option('-c, --config <file>', 'agent config file (default /etc/edgemesh/config/edgemesh-agent.yaml if it exists, else the embedded standalone default)')
    .option('--catalog <file>', 'run standalone from this catalog file of Kubernetes objects (overrides catalog.file)')
    .option('--node-name <name>', 'this node\'s name (default: $NODE_NAME, else the hostname)')
    .action(async (o: { config?: string; catalog?: string; nodeName?: string }) => (await import('./run.ts')).runNode('agent', o));

  program
    .command('gateway')
    .description('run the edge gateway: istio Gateway/VirtualService routing for HTTP (docs/gateway.md)')
    .option('-c, --config <file>', 'gateway config file (default /etc/edgemesh/config/edgemesh-gateway.yaml if it exists)')
    .option('--catalog <file>', 'run standalone from this catalog file')
    .option('--node-name <name>', 'this node\'s name (default: $NODE_NAME, else the hostname)')
    .action(async (o: { config?: string; catalog?: string; nodeName?: string }) => (await import('./run.ts')).runNode('gateway', o));

  const config = program.command('config').description('print or check configuration');
  config
    .command('defaults')
    .description('print the complete default config as YAML')
    .option('--gateway', 'the gateway\'s config instead of the agent\'s')
    .option('--standalone', 'the embedded standalone default (what runs with no config file)')
    .action(async (o: { gateway?: boolean; standalone?: boolean }) => (await import('./config.ts')).configDefaults(o));
  config
    .command('example-catalog')
    .description('print the example catalog file (one service and its endpoint) to start a standalone node from')
    .action(() => void process.stdout.write(EXAMPLE_CATALOG));
  config
    .command('check')
    .description('validate a config file (or the original\'s ConfigMap holding one) and list every problem with its line (exit 2 if any)')
    .argument('<file>', 'config file to check')
    .option('--gateway', 'check as a gateway config (default: from the file\'s kind)')
    .option('--strict', 'files missing on this machine (a kubeconfig) are errors, not warnings')
    .action(async (file: string, o: { gateway?: boolean; strict?: boolean }) => (await import('./config.ts')).configCheck(file, o));

  program
    .command('status')
    .description('show a running agent\'s state')
    .option('--admin <addr>', 'admin address of the agent', '127.0.0.1:10551')
    .option('--json', 'print the raw JSON')
    .action(async (o: { admin: string; json?: boolean }) => (await import('./status.ts')).showStatus(o));

  const psk = program.command('psk').description('manage the tunnel\'s pre-shared key');
  psk
    .command('generate')
    .description('generate a new random pre-shared key (32 bytes, base64)')
    .option('-o, --out <file>', 'write it to this file with mode 0600 instead of printing it')
    .option('--force', 'overwrite an existing file')
    .action(async (o: { out?: string; force?: boolean }) => (await import('./psk.ts')).pskGenerate(o));

  program
    .command('identity')
    .description('show this node\'s peer ID (its Ed25519 key is created in the state directory on first use)')
    .option('-c, --config <file>', 'agent config file (for commonConfig.stateDir)')
    .option('--node-name <name>', 'this node\'s name (default: $NODE_NAME, else the hostname)')
    .option('--json', 'as JSON')
    .action(async (o: { config?: string; nodeName?: string; json?: boolean }) => (await import('./identity.ts')).showIdentity(o));

  program
    .command('version')
    .description('print version, Bun version and platform')
    .option('--json', 'as JSON')
    .action(async (o: { json?: boolean }) => (await import('./version.ts')).printVersion(o));

  program
    .command('bench')
    .description('profile this node against same-run baselines; see `edgemesh bench --list` and docs/bench.md')
    .argument('[scenario...]', 'scenarios to run (default: all)')
    .option('--list', 'list the scenarios')
    .option('--only <names>', 'scenarios to run, comma-separated (same as naming them)')
    .option('--json', 'print the report as JSON (schema edgemesh-bench/1, docs/bench.md)')
    .option('--report <file.html>', 'also write the report as one self-contained HTML page')
    .option('--compare <old.json>', 'compare with an earlier --json report (exit 3 on a regression)')
    .option('--repeat <n>', 'repeats of each scenario; medians and spreads are reported', '3')
    .option('--duration <seconds>', 'seconds per measurement', '1')
    .option('--connections <n>', 'concurrent connections for the HTTP figures', '8')
    .option('--size <bytes>', 'bytes per round-trip message and UDP datagram', '64')
    .action(async (names: string[], o: BenchOptions) => (await import('./bench.ts')).runBench(names, o));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version are not errors; anything else commander rejects is a usage error.
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help' ? 0 : 2;
    }
    if (err instanceof EdgeMeshError) process.stderr.write(`edgemesh: ${err.message}\n`);
    else process.stderr.write(`edgemesh: unexpected error: ${describeError(err)}\n${err instanceof Error ? err.stack ?? '' : ''}\n`);
    return exitCodeFor(err);
  }
}

if (import.meta.main) {
  const code = await main(process.argv.slice(2));
  // Long-running commands (agent, gateway) own their exit; the rest end here.
  if (code !== 0 || !['agent', 'gateway'].includes(process.argv[2] ?? '')) process.exit(code);
}
