/**
 * tunnel/ — libp2p's "safe" events are not built when nobody listens.
 *
 * libp2p's streams dispatch an event through `safeDispatchEvent` (main-event's TypedEventEmitter) at every step:
 * every `send()` on a yamux stream and on the encrypted connection beneath it ends with an 'idle' event once the
 * write buffer is empty, so every yamux frame built two CustomEvents and two native dispatches, almost always to
 * no listener. In a CPU profile of the agents under new-connection load, CustomEvent, Event and dispatchEvent
 * took ~8% of each agent's samples. TypedEventEmitter keeps its own count of listeners (every listener is
 * added through its addEventListener, which registers a wrapper with the native EventTarget), so a type with no
 * listener can return at once: the result is what the dispatch would have returned (true: not cancelled). An
 * emitter whose dispatchEvent was replaced (libp2p's event bus forwards every event to the node) is left alone.
 *
 * A patch of the library's class, applied once when the first tunnel starts, like yamux-window.ts. If the class
 * does not look as expected (an upgrade changed it), the library's method stays and the tunnel says so.
 */
import { TypedEventEmitter } from 'main-event';

interface Emitter {
  listenerCount(type: string): number;
  safeDispatchEvent(type: string, detail?: unknown): boolean;
}

let applied: boolean | null = null;

/** Install the shortcut; returns false (library method kept) when this main-event version does not look as expected. */
export function quietEvents(): boolean {
  if (applied !== null) return applied;
  const proto = TypedEventEmitter.prototype as unknown as Emitter;
  const original = proto.safeDispatchEvent;
  if (typeof original !== 'function' || typeof proto.listenerCount !== 'function') return (applied = false);
  // listenerCount must reflect listeners added through addEventListener, or the shortcut would drop events.
  const probe = new TypedEventEmitter<Record<string, CustomEvent>>() as unknown as Emitter & EventTarget;
  let heard = 0;
  const listener = (): void => {
    heard++;
  };
  probe.addEventListener('probe', listener);
  const counts = probe.listenerCount('probe') === 1;
  probe.removeEventListener('probe', listener);
  if (!counts || probe.listenerCount('probe') !== 0) return (applied = false);
  const nativeDispatch = EventTarget.prototype.dispatchEvent;
  proto.safeDispatchEvent = function (this: Emitter & EventTarget, type: string, detail?: unknown) {
    // Only where dispatchEvent is the native one: libp2p's event bus replaces it on its instance to pass every
    // event on to the node's own listeners too (mDNS discoveries reach 'peer:discovery' that way).
    if (this.dispatchEvent === nativeDispatch && this.listenerCount(type) === 0) return true;
    return original.call(this, type, detail);
  };
  probe.addEventListener('probe', listener);
  probe.safeDispatchEvent('probe');
  if (heard !== 1) {
    proto.safeDispatchEvent = original;
    return (applied = false);
  }
  return (applied = true);
}
