/**
 * `edgemesh agent` and `edgemesh gateway`: load config (exit 2 before touching the network on any problem),
 * start the node, stop gracefully on SIGTERM/SIGINT within 2 s; a second signal forces exit.
 */
import { Agent } from '../agent.ts';
import { ConfigError, type Role, loadConfig } from '../config/load.ts';
import { describeError, exitCodeFor } from '../errors.ts';
import { createLogger } from '../obs/logger.ts';

export const STOP_DEADLINE_MS = 2000;

export async function runNode(role: Role, o: { config?: string; catalog?: string; nodeName?: string }): Promise<void> {
  const load = () => loadConfig({ role, configPath: o.config, catalogFile: o.catalog, nodeName: o.nodeName, env: process.env });
  const loaded = load();
  const cc = loaded.config.commonConfig;
  const logger = createLogger('', { level: cc.logLevel, format: cc.logFormat }).child(role);
  const agent = new Agent(loaded, { logger, reload: load });

  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) {
      logger.warn(`second ${sig}: exiting now`);
      process.exit(1);
    }
    stopping = true;
    logger.info(`${sig} received; stopping`);
    const deadline = setTimeout(() => {
      logger.error(`did not stop within ${STOP_DEADLINE_MS} ms; exiting anyway`);
      process.exit(1);
    }, STOP_DEADLINE_MS);
    void agent.stop().then(() => {
      clearTimeout(deadline);
      process.exit(0);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A stray rejection is a bug to report, not a reason to take the node's DNS and proxy down with it.
  process.on('unhandledRejection', (err) => logger.error('unhandled promise rejection (please report)', { error: describeError(err) }));

  // The node runs until a signal stops it, even when nothing else holds the event loop open (a gateway whose
  // NICs have no address yet, with the admin server off, has only unref'd timers and a file watch).
  setInterval(() => {}, 2 ** 30);
  try {
    await agent.start();
  } catch (err) {
    logger.error('start failed', { error: describeError(err) });
    await agent.stop();
    if (err instanceof ConfigError) throw err;
    // 2 for a configuration problem found only now (e.g. the bridge address needs root), 1 for the rest.
    process.exit(exitCodeFor(err));
  }
}
