// The DOM's WebSocket fits the `WebSocket` option (see types-env.ts for the ws package's).
import { ChattyClient, type WebSocketConstructor } from '../dist/index.js';

export const ctor: WebSocketConstructor = WebSocket;
export const client = new ChattyClient({ url: '/ws', token: () => Promise.resolve('t'), WebSocket });
