// Test helpers: bounded waits, and a tapped WebSocket (the `ws` package's, recording every
// frame each way, able to stop delivering frames or cut the connection) around the real server.

import { decode } from '@msgpack/msgpack';
import WebSocket from 'ws';

/** Resolve once `cond()` is truthy (polled), or reject after `ms`. */
export async function until(cond, ms = 10000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next `type` event of `client` whose detail passes `pred`, within `ms`. */
export function nextEvent(client, type, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const off = client.on(type, (d) => {
      if (!pred(d)) return;
      clearTimeout(timer);
      off();
      resolve(d);
    });
  });
}

/** `p`, or a rejection after `ms`. */
export function within(p, ms, what = 'promise') {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms))),
  ]);
}

/** Every event of some types, in order, as [type, detail]. */
export function record(client, types) {
  const log = [];
  for (const t of types) client.on(t, (d) => log.push([t, d]));
  return log;
}

function decodeAny(data) {
  if (typeof data === 'string') return JSON.parse(data);
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return decode(bytes);
}

/**
 * A WebSocket class for the client's `WebSocket` option, and the sockets it made. Each socket
 * keeps `out` (frames sent, decoded), `in` (frames received, decoded), `binaryIn`/`textIn`
 * counts, and `hold`: while true, received frames are recorded but not delivered (as if lost).
 */
export function tap() {
  const sockets = [];
  class TapWS extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.out = [];
      this.in = [];
      this.binaryOut = 0;
      this.textOut = 0;
      this.binaryIn = 0;
      this.textIn = 0;
      this.hold = false;
      sockets.push(this);
    }
    send(data, ...rest) {
      if (typeof data === 'string') this.textOut += 1;
      else this.binaryOut += 1;
      this.out.push(decodeAny(data));
      super.send(data, ...rest);
    }
    get onmessage() {
      return super.onmessage;
    }
    set onmessage(fn) {
      super.onmessage =
        fn &&
        ((e) => {
          if (typeof e.data === 'string') this.textIn += 1;
          else this.binaryIn += 1;
          this.in.push(decodeAny(e.data));
          if (!this.hold) fn(e);
        });
    }
  }
  return { TapWS, sockets, last: () => sockets[sockets.length - 1] };
}
