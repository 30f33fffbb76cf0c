// Type-level checks, compiled by `npm run typecheck` (never run): the public declarations in
// dist/ stand without the DOM library, frames narrow by `type`, and errors carry their code.
// Run `npm run build` first: this imports the built declarations, as a user of the package would.

import {
  ChattyClient,
  ChattyError,
  type ChattyErrorCode,
  type ClientFrame,
  type JoinInfo,
  type MsgpackCodec,
  type ServerFrame,
  type ServerFrameOf,
  type UpdateEvent,
  type WebSocketConstructor,
} from '../dist/index.js';

declare const WS: WebSocketConstructor;
declare const codec: MsgpackCodec;

const client = new ChattyClient({ url: 'ws://localhost:8080/ws', token: () => 'jwt', WebSocket: WS, encoding: 'msgpack', codec });

export function describe(f: ServerFrame): string {
  switch (f.type) {
    case 'message':
      return `${f.room}#${f.seq} ${f.from}: ${f.body}`;
    case 'update':
      return `${f.change} of ${f.seq} at rev ${f.rev} with ${f.reactions.length} reactions`;
    case 'presence_page':
      return `${f.users.length} users, next ${f.next ?? 'none'}`;
    case 'error': {
      const code: ChattyErrorCode = f.code;
      return code;
    }
    case 'refreshed':
      return String(f.exp);
    default:
      return f.type;
  }
}

const ack: ServerFrameOf<'ack'> = { type: 'ack', room: 'r', cid: 'c', seq: 1, ts: 2 };
// @ts-expect-error a join needs a room
const badJoin: ClientFrame = { type: 'join', ref: 'r1' };

export async function use(): Promise<number> {
  client.on('frame', (f) => describe(f));
  client.on('update', (u: UpdateEvent) => u.change === 'reload' && u.mine);
  client.on('message', (m) => m.own && m.cid);
  const info: JoinInfo = await client.join('room', { presence: 'count' });
  const copy = client.send('room', 'hi', { meta: { reply_to: info.seq } });
  try {
    const { seq } = await copy.acked;
    return seq + ack.seq;
  } catch (e) {
    if (e instanceof ChattyError && e.code === 'queue_full') return -1;
    throw e;
  }
}

export { badJoin };
