/**
 * dial/ — one call that opens a byte pipe to an endpoint wherever it is: a local socket (LocalDialer) or a tunnel
 * stream through its node (the RemoteDialer the Dialer was given). For consumers that hold a pipe per exchange
 * and need no early bytes (the gateway's upstream connections); the proxy keeps its own tighter path (tcp.ts).
 *
 *   const pipe = await openPipe(dialer, local, ep, handlers, AbortSignal.timeout(5000))
 */
import type { LbEndpoint } from '../lb/balancer.ts';
import type { Pipe, PipeHandlers } from './contract.ts';
import type { LocalDialer, LocalSink, LocalSocket } from './local.ts';
import { detach } from './local.ts';
import type { Dialer } from './route.ts';
import { EdgeMeshError } from '../errors.ts';

export function openPipe(dialer: Dialer, local: LocalDialer, ep: LbEndpoint, h: PipeHandlers, signal: AbortSignal): Promise<Pipe> {
  if (!dialer.isLocal(ep)) {
    const remote = dialer.remote;
    if (!remote) return Promise.reject(new EdgeMeshError('DIAL_FAILED', `endpoint ${ep.key} is on node ${ep.nodeName} and the tunnel is off`));
    return remote.open({ nodeName: ep.nodeName, protocol: 'tcp', ip: ep.ip, port: ep.port }, h, signal).then((p) => {
      p.resume();
      return p;
    });
  }
  return new Promise<Pipe>((resolve, reject) => {
    let sock: LocalSocket | null = null;
    const sink: LocalSink = {
      localOpened(s) {
        if (signal.aborted) return false;
        sock = s;
        signal.removeEventListener('abort', onAbort);
        resolve(s);
        return true;
      },
      localFailed(why) {
        signal.removeEventListener('abort', onAbort);
        reject(new EdgeMeshError('DIAL_FAILED', `connect ${ep.key}: ${why}`));
      },
      localData: (c) => h.data(c),
      localDrain: () => h.drain(),
      localEnd: () => h.end(),
      localClose: (reset) => {
        if (sock) detach(sock);
        h.close(reset);
      },
    };
    const d = local.dial(ep.ip, ep.port, sink);
    const onAbort = (): void => {
      local.cancel(d);
      reject(new EdgeMeshError('DIAL_FAILED', `connect ${ep.key}: ${String(signal.reason ?? 'aborted')}`));
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}
