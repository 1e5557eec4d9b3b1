/** `edgemesh status`: ask a running agent's admin server and print its state for a human. */
import type { AgentStatus } from '../agent.ts';
import { parseHostPort } from '../config/schema.ts';
import { EdgeMeshError, describeError } from '../errors.ts';

function ago(iso: string | null): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

function duration(s: number): string {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${m}m` : m ? `${m}m${s % 60}s` : `${s}s`;
}

export function formatStatus(st: AgentStatus): string {
  const c = st.catalog;
  const lines = [
    `edgemesh ${st.role} ${st.version} on node ${st.nodeName} (${st.mode} mode), up ${duration(st.uptimeSeconds)}, pid ${st.pid}`,
    `ready:     ${st.ready.ready ? 'yes' : 'NO'} — ${st.ready.reason}`,
    `config:    ${st.config}`,
    ...(st.nice ? [`priority:  nice ${st.nice.actual}${st.nice.error ? ` (commonConfig.nice ${st.nice.wanted} refused: ${st.nice.error})` : ''}`] : []),
    ...(st.startup ? [`start-up:  ${st.startup.ms} ms (${Object.entries(st.startup.phases).map(([k, v]) => `${k} ${v}`).join(', ')})`] : []),
    `catalog:   ${c.counts.services} services, ${c.counts.endpoints} endpoint sets, ${c.counts.nodes} nodes, ${c.counts.destinationRules} destination rules, ${c.counts.gateways} gateways, ${c.counts.virtualServices} virtual services, ${c.counts.secrets} secrets`,
    `           version ${c.version}, from ${c.origin}, updated ${ago(c.updatedAt)}`,
  ];
  const src = c.source as { kind?: string; path?: string; lastError?: string | null; server?: string; kinds?: { kind: string; state: string; error: string | null }[] } | null;
  if (src?.kind === 'file') lines.push(`source:    file ${src.path}${src.lastError ? `\n           LAST EDIT REJECTED: ${src.lastError}` : ''}`);
  if (src?.kind === 'kubernetes') {
    lines.push(`source:    kubernetes ${src.server}`);
    for (const k of src.kinds ?? []) lines.push(`           ${k.kind.padEnd(18)} ${k.state}${k.error ? ` (${k.error})` : ''}`);
  }
  lines.push(`snapshot:  ${c.snapshot.path ?? 'disabled'}${c.snapshot.path ? `, saved ${ago(c.snapshot.savedAt)}` : ''}${c.snapshot.error ? ` — WRITE FAILING: ${c.snapshot.error}` : ''}`);
  lines.push('modules:');
  for (const m of st.modules) lines.push(`  ${m.name.padEnd(11)} ${(m.enabled ? 'enabled' : 'disabled').padEnd(9)} ${m.state.padEnd(10)} ${m.detail}`);
  if (st.proxy) {
    lines.push(`service ports (${st.proxy.length}):`);
    const shown = st.proxy.slice(0, 20);
    for (const p of shown) {
      const dest = p.clusterIPs.length ? `${p.clusterIPs.join(',')}:${p.port}` : `port ${p.port}`;
      lines.push(`  ${p.service.padEnd(28)} ${p.protocol.padEnd(3)} ${dest.padEnd(22)} → ${p.listenHost}:${p.listenPort}  ${p.endpoints} endpoints, ${p.policy}, ${p.path}, ${p.active} active${p.warning ? `  (${p.warning})` : ''}`);
    }
    if (st.proxy.length > shown.length) lines.push(`  … ${st.proxy.length - shown.length} more: /debug/proxy`);
  }
  if (st.gateway) {
    const g = st.gateway;
    lines.push(`gateway:   addresses ${g.addresses.join(' ') || '(none selected)'}`);
    for (const l of g.listeners) lines.push(`  ${`${l.address}:${l.port}`.padEnd(22)} ${l.protocol.padEnd(5)} ${l.state}${l.error ? ` (${l.error})` : ''}`);
    if (g.routes.length) lines.push('routes:');
    for (const r of g.routes) lines.push(`  ${r.id.padEnd(32)} ${String(r.requests).padStart(8)} requests${r.lastError ? `  last error: ${r.lastError}` : ''}`);
    for (const p of g.problems) lines.push(`  ! ${p}`);
  }
  if (st.bridgeGuard) {
    const g = st.bridgeGuard;
    lines.push(`guard:     ${g.ip} only for the node and its pods; dropping from ${g.interfaces.join(', ') || '(no uplink found)'} (${g.backend}), ${g.dropped} dropped${g.error ? ` — FAILING: ${g.error}` : ''}`);
  }
  if (st.tunnel) {
    const t = st.tunnel;
    lines.push(`tunnel:    peer ${t.peerId}${t.relay ? ' (relay)' : ''}`);
    lines.push(`           encryption ${t.encryption}`);
    lines.push(`           listening ${t.listen.join(' ') || 'nowhere'}`);
    lines.push(`           hole punching ${t.punch.sourcePort === null ? 'off' : `from port ${t.punch.sourcePort}, seen as ${t.punch.observed.join(' ') || '(not yet)'}, ${t.punch.successes}/${t.punch.attempts} succeeded`}`);
    lines.push(`peers (${t.peers.length}):`);
    for (const p of t.peers) {
      const path = p.path === 'relayed' ? `relayed via ${p.relay ?? '?'}` : 'direct';
      lines.push(`  ${p.node.padEnd(20)} ${path.padEnd(24)} rtt ${p.rttMs === undefined ? '?' : `${p.rttMs} ms`}  ${p.streams} streams  ${p.peerId}`);
    }
  }
  return lines.join('\n') + '\n';
}

export async function showStatus(o: { admin: string; json?: boolean }): Promise<void> {
  const hp = parseHostPort(o.admin);
  if (!hp) throw new EdgeMeshError('USAGE', `--admin ${JSON.stringify(o.admin)} is not IP:PORT`);
  const host = hp.host.includes(':') ? `[${hp.host}]` : hp.host;
  let res: Response;
  try {
    res = await fetch(`http://${host}:${hp.port}/status`, { signal: AbortSignal.timeout(3000) });
  } catch (err) {
    throw new EdgeMeshError('ADMIN_UNREACHABLE', `no agent answers on ${o.admin} (${describeError(err)}); is it running? Its address is commonConfig.adminAddress`);
  }
  if (!res.ok) throw new EdgeMeshError('ADMIN_UNREACHABLE', `${o.admin} answered ${res.status}; is that an edgemesh admin address?`);
  const st = (await res.json()) as AgentStatus;
  process.stdout.write(o.json ? JSON.stringify(st, null, 2) + '\n' : formatStatus(st));
}
