/** `edgemesh config defaults` and `edgemesh config check FILE`. */
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { type Role, defaultConfig, detectBaseMode, embeddedOverlay, formatIssue, mergeConfig, parseYamlText } from '../config/load.ts';
import { EdgeMeshError } from '../errors.ts';

export function configDefaults(o: { gateway?: boolean; standalone?: boolean }): void {
  const role: Role = o.gateway ? 'gateway' : 'agent';
  const mode = detectBaseMode(process.env);
  const cfg = o.standalone ? mergeConfig(role, mode, undefined, embeddedOverlay(role, process.env)).config : defaultConfig(role, mode);
  const head = o.standalone
    ? '# The embedded standalone default: what runs when no config file exists.\n'
    : `# Complete default ${role} config (${mode} mode defaults). Keys match case-insensitively. See docs/config.md.\n`;
  process.stdout.write(head + stringify(cfg, { lineWidth: 0 }));
}

export function configCheck(file: string, o: { gateway?: boolean }): void {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgeMeshError('CONFIG_NOT_FOUND', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(err)}`);
  }
  const parsed = parseYamlText(text);
  let issues = parsed.issues;
  let role: Role = o.gateway ? 'gateway' : 'agent';
  if (!issues.length) {
    const kind = (parsed.data as { kind?: unknown } | null)?.kind;
    if (!o.gateway && typeof kind === 'string' && kind.toLowerCase() === 'edgemeshgateway') role = 'gateway';
    issues = mergeConfig(role, detectBaseMode(process.env), parsed.data).issues;
  }
  if (issues.length) {
    process.stderr.write(`${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}:\n${issues.map((i) => `  ${formatIssue(i)}\n`).join('')}`);
    process.exitCode = 2;
    return;
  }
  process.stdout.write(`${file}: ok (${role} config)\n`);
}
