/**
 * tunnel/ — yamux frames handled and sent without building their trace description when trace logging is off.
 *
 * @libp2p/yamux 8's muxer calls `this.log.trace('received frame %o', debugFrame(header))` for every frame it
 * receives and the same for every frame it sends. The logger ignores the call when tracing is off, but the
 * argument is built first: an object, a four-element array and a filter per frame, ~2-3% of each agent's CPU
 * under new-connection load through the tunnel (debugFrame's filter alone was 1.8% of one agent's samples).
 * With tracing off, data and window-update frames for a stream go straight to handleStreamMessage, and frames
 * are encoded and sent as the library does (the 12-byte yamux header, then the body); everything else (pings,
 * go-away, anything invalid, and any frame while tracing is on) takes the library's own method.
 *
 * The muxer class is not exported, so the patch is applied to the prototype of the first muxer the factory
 * creates (the factory's class is reachable from an instance). If the methods it replaces are not there (a yamux
 * upgrade changed them), the library's stay and the tunnel says so.
 */
import { yamux } from '@libp2p/yamux';
import { Uint8ArrayList } from 'uint8arraylist';

/** The yamux wire format's frame types (spec: hashicorp/yamux spec.md). */
const DATA = 0;
const WINDOW_UPDATE = 1;
const HEADER_LENGTH = 12;

interface Header {
  type: number;
  flag: number;
  streamID: number;
  length: number;
}

interface MuxerProto {
  log: { trace: { enabled?: boolean } };
  handleFrame(frame: { header: Header; data?: Uint8ArrayList }): void;
  handleStreamMessage(frame: { header: Header; data?: Uint8ArrayList }): void;
  sendFrame(header: Header, data?: Uint8Array | Uint8ArrayList): boolean;
  send(data: Uint8Array | Uint8ArrayList): boolean;
}

function encodeHeader(h: Header): Uint8Array {
  const b = new Uint8Array(HEADER_LENGTH);
  // b[0]: version 0
  b[1] = h.type;
  b[2] = h.flag >>> 8;
  b[3] = h.flag;
  b[4] = h.streamID >>> 24;
  b[5] = h.streamID >>> 16;
  b[6] = h.streamID >>> 8;
  b[7] = h.streamID;
  b[8] = h.length >>> 24;
  b[9] = h.length >>> 16;
  b[10] = h.length >>> 8;
  b[11] = h.length;
  return b;
}

let state: 'unapplied' | 'waiting' | 'applied' | 'failed' = 'unapplied';

function patchMuxer(proto: MuxerProto): boolean {
  const handleFrame = proto.handleFrame;
  const sendFrame = proto.sendFrame;
  if (typeof handleFrame !== 'function' || typeof sendFrame !== 'function' || typeof proto.handleStreamMessage !== 'function' || typeof proto.send !== 'function') return false;
  proto.handleFrame = function (this: MuxerProto, frame) {
    const h = frame.header;
    if (h.streamID !== 0 && (h.type === DATA || h.type === WINDOW_UPDATE) && this.log.trace.enabled !== true) {
      this.handleStreamMessage(frame);
      return;
    }
    handleFrame.call(this, frame);
  };
  proto.sendFrame = function (this: MuxerProto, header, data) {
    if (this.log.trace.enabled === true || (header.type === DATA && data == null)) return sendFrame.call(this, header, data);
    return this.send(header.type === DATA ? new Uint8ArrayList(encodeHeader(header), data!) : encodeHeader(header));
  };
  return true;
}

/**
 * Install the patch (on the first muxer created from then on); false when this yamux version does not look as
 * expected, or when the first muxer's class did not (the library's methods stay).
 */
export function quietFrames(unexpected: () => void): boolean {
  if (state === 'applied' || state === 'waiting') return true;
  if (state === 'failed') return false;
  const factoryProto = Object.getPrototypeOf((yamux() as (c: unknown) => object)({})) as { createStreamMuxer(this: unknown, maConn: unknown): MuxerProto };
  const create = factoryProto.createStreamMuxer;
  if (typeof create !== 'function') {
    state = 'failed';
    return false;
  }
  factoryProto.createStreamMuxer = function (this: unknown, maConn: unknown) {
    const muxer = create.call(this, maConn);
    if (state === 'waiting') {
      state = patchMuxer(Object.getPrototypeOf(muxer) as MuxerProto) ? 'applied' : 'failed';
      factoryProto.createStreamMuxer = create;
      if (state === 'failed') unexpected();
    }
    return muxer;
  };
  state = 'waiting';
  return true;
}

/** Whether the muxer's methods were replaced (false until the first tunnel connection, or if the class differed). */
export function quietFramesApplied(): boolean {
  return state === 'applied';
}
