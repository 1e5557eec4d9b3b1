/**
 * tunnel/ — stream limits as the original's `tunnelLimitConfig` documents them: streams per peer and in all, each
 * direction, counted across every connection to a peer (libp2p's own per-protocol limits apply per connection, so
 * a peer with two connections, or one that reconnects, had twice the budget). A stream over a limit is reset at
 * once and counted.
 *
 *   const inbound = new StreamLimits({ perPeer: 1024, total: 10240 });
 *   if (inbound.take(peerId, stream) !== 'ok') stream.abort(new Error('stream limit'));
 */

export interface StreamLimitOptions {
  perPeer: number;
  total: number;
}

export class StreamLimits {
  private readonly byPeer = new Map<string, number>();
  private all = 0;
  readonly refused = { peer: 0, total: 0 };

  constructor(private readonly o: StreamLimitOptions) {}

  /** Whether one more stream of `peer` fits (without taking it); a refusal is counted. */
  check(peer: string): 'ok' | 'peer' | 'total' {
    const why = this.all >= this.o.total ? 'total' : (this.byPeer.get(peer) ?? 0) >= this.o.perPeer ? 'peer' : 'ok';
    if (why !== 'ok') this.refused[why]++;
    return why;
  }

  /** Count `stream` against `peer` until it closes; over a limit it is not counted (the refusal is) and the limit is returned. */
  take(peer: string, stream: { addEventListener(type: 'close', fn: () => void, o?: { once: boolean }): void }): 'ok' | 'peer' | 'total' {
    const why = this.check(peer);
    if (why !== 'ok') return why;
    this.all++;
    this.byPeer.set(peer, (this.byPeer.get(peer) ?? 0) + 1);
    stream.addEventListener('close', () => {
      this.all--;
      const n = (this.byPeer.get(peer) ?? 1) - 1;
      if (n > 0) this.byPeer.set(peer, n);
      else this.byPeer.delete(peer);
    }, { once: true });
    return 'ok';
  }
}
