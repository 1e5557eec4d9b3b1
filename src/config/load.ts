/**
 * config/ — defaults, loading and validation. The config module owns every default; nothing else hard-codes one.
 *
 * Order (as the original): defaults → mode-based defaults (cloud/edge from the environment) → the
 * user's file → cross-field checks → final mode (standalone / manual / cloud / edge). With no file at all the
 * agent uses the embedded standalone default, which works without root and without Kubernetes.
 *
 *   const r = loadAgentConfig({ configPath: '/etc/edgemesh/config/edgemesh-agent.yaml', env: process.env })
 *   r.mode  // 'edge'
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir, hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { EdgeMeshError } from '../errors.ts';
import { type ConfigIssue, type ObjectField, parseHostPort } from './schema.ts';
import { type ConfigSource, readConfigText } from './source.ts';
import { type AgentConfig, type GatewayConfig, agentSchema, gatewaySchema } from './schema-edgemesh.ts';

export type Role = 'agent' | 'gateway';
/** standalone: catalog from a file, no Kubernetes. The other three are the original's (docs/config.md, "Run modes"). */
export type RunMode = 'standalone' | 'manual' | 'cloud' | 'edge';
export type Env = Record<string, string | undefined>;

export const DEFAULT_CONFIG_PATH: Record<Role, string> = {
  agent: '/etc/edgemesh/config/edgemesh-agent.yaml',
  gateway: '/etc/edgemesh/config/edgemesh-gateway.yaml',
};

export class ConfigError extends EdgeMeshError {
  readonly issues: ConfigIssue[];
  readonly file: string;
  constructor(file: string, issues: ConfigIssue[]) {
    super('CONFIG_INVALID', `${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}:\n` + issues.map((i) => `  ${formatIssue(i, file)}`).join('\n'));
    this.issues = issues;
    this.file = file;
  }
}

/** `file:line:col: path: message` when the place is known (`line L:C:` without a file), else `path: message`. */
export function formatIssue(i: ConfigIssue, file?: string): string {
  if (i.line === undefined) return `${i.path}: ${i.message}`;
  return `${file ? `${file}:` : 'line '}${i.line}:${i.col ?? 1}: ${i.path}: ${i.message}`;
}

/** The original's cloud/edge detection: kubelet injects KUBERNETES_PORT, KubeEdge's edged does not. */
export function detectBaseMode(env: Env): 'cloud' | 'edge' {
  return env.KUBERNETES_PORT !== undefined ? 'cloud' : 'edge';
}

/** A state directory an unprivileged user can write, for the embedded default. */
export function userStateDir(env: Env): string {
  if (env.XDG_STATE_HOME?.startsWith('/')) return join(env.XDG_STATE_HOME, 'edgemesh');
  const home = env.HOME || homedir();
  return home && home !== '/' ? join(home, '.local', 'state', 'edgemesh') : `/tmp/edgemesh-${process.getuid?.() ?? 'user'}`;
}

type AnyConfig = AgentConfig | GatewayConfig;
function schemaFor(role: Role): ObjectField<any> {
  return role === 'agent' ? agentSchema : gatewaySchema;
}

/** Complete defaults for a role in a base mode (what `edgemesh config defaults` prints). */
export function defaultConfig(role: 'agent', mode: 'cloud' | 'edge'): AgentConfig;
export function defaultConfig(role: 'gateway', mode: 'cloud' | 'edge'): GatewayConfig;
export function defaultConfig(role: Role, mode: 'cloud' | 'edge'): AnyConfig;
export function defaultConfig(role: Role, mode: 'cloud' | 'edge'): AnyConfig {
  const cfg = schemaFor(role).defaults() as AnyConfig;
  if (role === 'agent') (cfg as AgentConfig).modules.edgeDNS.enable = mode === 'edge';
  return cfg;
}

/** The embedded standalone default as a config overlay: no root, no Kubernetes, loopback only. */
export function embeddedOverlay(role: Role, env: Env): Record<string, unknown> {
  const stateDir = userStateDir(env);
  const overlay: Record<string, unknown> = {
    commonConfig: { stateDir, adminAddress: role === 'agent' ? '127.0.0.1:10551' : '127.0.0.1:10552' },
    catalog: { file: join(stateDir, 'catalog.yaml') },
  };
  // DNS and the proxy on loopback, and no interception rules: nothing here needs root or touches the firewall.
  if (role === 'agent') {
    overlay.modules = {
      edgeDNS: { enable: true, listenAddress: '127.0.0.1', listenPort: 10053 },
      edgeProxy: { enable: true, listenAddress: '127.0.0.1', interception: 'none' },
    };
  }
  return overlay;
}

/** Places issues that carry only a key path at that key's line and column (readConfigText's locate). */
export function placeIssues(issues: ConfigIssue[], src: ConfigSource): ConfigIssue[] {
  return issues.map((i) => {
    if (i.line !== undefined) return i;
    const at = src.locate(i.path, i.message.startsWith('unknown key'));
    return at ? { ...i, line: at.line, col: at.col } : i;
  });
}

export interface LoadOptions {
  role: Role;
  /** Explicit --config; when absent the role's default path is used if it exists, else the embedded default. */
  configPath?: string;
  /** --catalog: a catalog file that overrides catalog.file and makes the run standalone. */
  catalogFile?: string;
  /** --node-name. */
  nodeName?: string;
  env: Env;
  hostname?: () => string;
  /** Override for tests; defaults to DEFAULT_CONFIG_PATH[role]. */
  defaultPath?: string;
}

export interface LoadedConfig<C extends AnyConfig = AnyConfig> {
  config: C;
  role: Role;
  mode: RunMode;
  /** The file read, or "embedded default". */
  source: string;
  nodeName: string;
  stateDir: string;
  /** Absolute path of the catalog file in standalone mode. */
  catalogFile: string | null;
  /** null when persistence is off. */
  snapshotPath: string | null;
  admin: { host: string; port: number } | null;
  /** True when the embedded default applies: the agent may create its example catalog file. */
  embedded: boolean;
}

/**
 * Merge `data` onto the defaults and validate. Returns the config and every problem found (never throws for
 * content; the caller decides). Exposed for `config check`.
 */
export function mergeConfig(role: 'agent', baseMode: 'cloud' | 'edge', data: unknown, overlay?: Record<string, unknown>): { config: AgentConfig; issues: ConfigIssue[] };
export function mergeConfig(role: 'gateway', baseMode: 'cloud' | 'edge', data: unknown, overlay?: Record<string, unknown>): { config: GatewayConfig; issues: ConfigIssue[] };
export function mergeConfig(role: Role, baseMode: 'cloud' | 'edge', data: unknown, overlay?: Record<string, unknown>): { config: AnyConfig; issues: ConfigIssue[] };
export function mergeConfig(role: Role, baseMode: 'cloud' | 'edge', data: unknown, overlay?: Record<string, unknown>): { config: AnyConfig; issues: ConfigIssue[] } {
  const schema = schemaFor(role);
  const issues: ConfigIssue[] = [];
  let cfg = defaultConfig(role, baseMode);
  if (overlay) cfg = schema.merge(cfg, overlay, '', issues) as AnyConfig;
  if (data !== undefined && data !== null) cfg = schema.merge(cfg, data, '', issues) as AnyConfig;
  crossCheck(cfg, issues);
  return { config: cfg, issues };
}

function crossCheck(cfg: AnyConfig, issues: ConfigIssue[]): void {
  const kc = cfg.kubeAPIConfig.kubeConfig;
  if (kc && !issues.some((i) => i.path === 'kubeAPIConfig.kubeConfig') && !existsSync(kc)) {
    issues.push({ path: 'kubeAPIConfig.kubeConfig', message: `${JSON.stringify(kc)} does not exist on this machine`, machine: true });
  }
  const sp = cfg.catalog.snapshotPath;
  if (sp !== '' && sp !== 'off' && !sp.startsWith('/')) {
    issues.push({ path: 'catalog.snapshotPath', message: `${JSON.stringify(sp)} is not an absolute path, "" or "off"` });
  }
  const seen = new Set<string>();
  cfg.modules.edgeTunnel.relayNodes.forEach((r, i) => {
    if (r.nodeName && seen.has(r.nodeName)) issues.push({ path: `modules.edgeTunnel.relayNodes[${i}].nodeName`, message: `${JSON.stringify(r.nodeName)} is listed twice` });
    seen.add(r.nodeName);
  });
}

const NODE_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function resolveNodeName(flag: string | undefined, env: Env, hostname: () => string): { name: string; issue?: ConfigIssue } {
  const name = flag || env.NODE_NAME || hostname();
  const from = flag ? '--node-name' : env.NODE_NAME ? 'NODE_NAME' : 'hostname';
  if (!name) return { name: '', issue: { path: from, message: 'node name is empty' } };
  // Kubernetes node names are DNS subdomains; an uppercase hostname is a common surprise, so say so plainly.
  if (name.length > 253 || !NODE_NAME_RE.test(name)) {
    return { name, issue: { path: from, message: `${JSON.stringify(name)} is not a valid Kubernetes node name (lowercase letters, digits, "-" and ".")` } };
  }
  return { name };
}

/** Load, merge, validate and resolve everything a command needs. Throws ConfigError (exit 2) on any problem. */
export function loadConfig(opts: LoadOptions): LoadedConfig {
  const { role, env } = opts;
  const baseMode = detectBaseMode(env);
  const defaultPath = opts.defaultPath ?? DEFAULT_CONFIG_PATH[role];
  let path = opts.configPath;
  if (path === undefined && existsSync(defaultPath)) path = defaultPath;

  let data: unknown;
  let src: ConfigSource | null = null;
  const embedded = path === undefined;
  if (path !== undefined) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new EdgeMeshError('CONFIG_NOT_FOUND', `cannot read config file ${path}: ${code === 'ENOENT' ? 'no such file' : String((err as Error).message)}`);
    }
    src = readConfigText(text);
    if (src.issues.length) throw new ConfigError(path, src.issues);
    data = src.data;
  }
  const overlay = embedded ? embeddedOverlay(role, env) : undefined;
  const merged = mergeConfig(role, baseMode, data, overlay);
  const config = merged.config;
  const issues = src ? placeIssues(merged.issues, src) : merged.issues;

  const host = resolveNodeName(opts.nodeName, env, opts.hostname ?? osHostname);
  if (host.issue) issues.push(host.issue);

  const catalogFile = opts.catalogFile ?? (config.catalog.file || null);
  if (opts.catalogFile !== undefined && !existsSync(opts.catalogFile)) {
    issues.push({ path: '--catalog', message: `${JSON.stringify(opts.catalogFile)} does not exist` });
  } else if (!embedded && opts.catalogFile === undefined && catalogFile && !existsSync(catalogFile)) {
    issues.push({ path: 'catalog.file', message: `${JSON.stringify(catalogFile)} does not exist` });
  }
  if (issues.length) throw new ConfigError(path ?? 'embedded default', issues);

  const kube = config.kubeAPIConfig;
  const mode: RunMode = catalogFile ? 'standalone' : kube.master || kube.kubeConfig ? 'manual' : baseMode;
  const stateDir = config.commonConfig.stateDir;
  const sp = config.catalog.snapshotPath;
  return {
    config,
    role,
    mode,
    source: path ?? 'embedded default',
    nodeName: host.name,
    stateDir,
    catalogFile: catalogFile ? (catalogFile.startsWith('/') ? catalogFile : join(process.cwd(), catalogFile)) : null,
    snapshotPath: sp === 'off' ? null : sp || join(stateDir, role === 'agent' ? 'catalog.json' : 'gateway-catalog.json'),
    admin: config.commonConfig.adminAddress ? parseHostPort(config.commonConfig.adminAddress) : null,
    embedded,
  };
}

/** The proxy's listen address: edgeProxy.listenAddress, else the bridge IP (the original binds there). */
export function proxyListenAddress(cfg: AgentConfig): string {
  return cfg.modules.edgeProxy.listenAddress || cfg.commonConfig.bridgeDeviceIP;
}

/** The DNS listen address: edgeDNS.listenAddress, else the bridge IP (the original binds there). */
export function dnsListenAddress(cfg: AgentConfig): string {
  return cfg.modules.edgeDNS.listenAddress || cfg.commonConfig.bridgeDeviceIP;
}
