// The WebSocket classes users pass fit the `WebSocket` option: the ws package's (Node) here,
// and the DOM's in types-dom.ts.
import type { WebSocket as WsWebSocket } from 'ws';
import { ChattyClient, type WebSocketConstructor } from '../dist/index.js';

declare const Ws: typeof WsWebSocket;
export const ctor: WebSocketConstructor = Ws;
export const client = new ChattyClient({ url: 'ws://localhost/ws', token: 't', WebSocket: Ws });
