/** `edgemesh config defaults` and `edgemesh config check FILE`. */
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { type Role, defaultConfig, detectBaseMode, embeddedOverlay, formatIssue, mergeConfig, placeIssues } from '../config/load.ts';
import { readConfigText } from '../config/source.ts';
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

export function configCheck(file: string, o: { gateway?: boolean; strict?: boolean }): void {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgeMeshError('CONFIG_NOT_FOUND', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(err)}`);
  }
  const src = readConfigText(text);
  let issues = src.issues;
  let role: Role = o.gateway ? 'gateway' : 'agent';
  if (!issues.length) {
    const kind = (src.data as { kind?: unknown } | null)?.kind;
    if (!o.gateway && typeof kind === 'string' && kind.toLowerCase() === 'edgemeshgateway') role = 'gateway';
    issues = placeIssues(mergeConfig(role, detectBaseMode(process.env), src.data).issues, src);
  }
  if (src.note) process.stdout.write(`${file}: ${src.note}\n`);
  // A file missing on this machine (a kubeconfig, say) is this machine's condition, not the file's: a warning.
  const warnings = o.strict ? [] : issues.filter((i) => i.machine);
  const errors = issues.filter((i) => !warnings.includes(i));
  for (const w of warnings) process.stderr.write(`warning: ${formatIssue(w, file)}\n`);
  if (errors.length) {
    process.stderr.write(`${file}: ${errors.length} problem${errors.length === 1 ? '' : 's'}:\n${errors.map((i) => `  ${formatIssue(i, file)}\n`).join('')}`);
    process.exitCode = 2;
    return;
  }
  process.stdout.write(`${file}: ok (${role} config${warnings.length ? `; ${warnings.length} warning${warnings.length === 1 ? '' : 's'} about this machine` : ''})\n`);
}
