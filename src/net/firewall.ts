/**
 * net/ — running the firewall tools (nft, iptables-restore, conntrack) and choosing the iptables flavour. Shared by
 * the proxy's interception rules (proxy/rules.ts) and the bridge guard (net/guard.ts).
 */

/** Runs a rules tool and collects its exit code and output. */
export async function run(cmd: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn(cmd, { stdin: stdin === undefined ? 'ignore' : new TextEncoder().encode(stdin), stdout: 'pipe', stderr: 'pipe' });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out, err: err.trim() };
}

/** Which iptables flavour the node uses: the one holding more rules (iptables-wrapper's rule), nft if none. */
export async function detectIptablesMode(): Promise<'' | 'nft' | 'legacy'> {
  const has = (b: string) => !!Bun.which(b);
  if (!has('iptables-nft-save') || !has('iptables-legacy-save')) return '';
  const count = async (b: string) => (await run([b])).out.split('\n').filter((l) => l.startsWith('-A')).length;
  const [nft, legacy] = await Promise.all([count('iptables-nft-save'), count('iptables-legacy-save')]);
  return legacy > nft ? 'legacy' : 'nft';
}

/** `iptables-restore` → `iptables-legacy-restore` for mode "legacy"; the plain name for "". */
export function iptablesBin(tool: 'iptables' | 'iptables-restore' | 'iptables-save', mode: '' | 'nft' | 'legacy'): string {
  return mode ? tool.replace('iptables', `iptables-${mode}`) : tool;
}
