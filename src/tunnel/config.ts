/** tunnel/ — the module's configuration: modules.edgeTunnel of the agent config (docs/config.md). */
import type { AgentConfig } from '../config/schema-edgemesh.ts';

export type TunnelConfig = AgentConfig['modules']['edgeTunnel'];
