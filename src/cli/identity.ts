/** `edgemesh identity`: this node's peer ID (the key is created on first use), for binding it to the node name. */
import { loadConfig } from '../config/load.ts';
import { createLogger } from '../obs/logger.ts';
import { loadOrCreateIdentity } from '../tunnel/identity.ts';

export async function showIdentity(o: { config?: string; nodeName?: string; json?: boolean }): Promise<void> {
  const loaded = loadConfig({ role: 'agent', configPath: o.config, nodeName: o.nodeName, env: process.env });
  const id = await loadOrCreateIdentity(loaded.stateDir, createLogger('identity', { level: 'warn' }));
  if (o.json) {
    process.stdout.write(JSON.stringify({ nodeName: loaded.nodeName, peerId: id.peerId, keyFile: id.path, created: id.created }) + '\n');
    return;
  }
  process.stdout.write(`node ${loaded.nodeName}\npeer ID ${id.peerId}\nkey ${id.path}${id.created ? ' (created now)' : ''}\n`);
}
