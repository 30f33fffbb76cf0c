// The Chatty wire protocol (v1 with the v1.1 additions) as TypeScript types: every frame the
// server sends (`ServerFrame`, a union discriminated by `type`) and every frame a client sends
// (`ClientFrame`). docs/protocol.md is the prose. Types only: this module compiles to nothing.

/** Any JSON value (what `meta` and `event.data` hold). */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A JSON object: `meta` of a message, `data` of an event. */
export type JsonObject = Record<string, JsonValue>;

/** The two encodings, as subprotocols `chatty.v1.json` and `chatty.v1.msgpack`. */
export type Encoding = 'json' | 'msgpack';

/** Error codes the server puts in `error` frames (and the HTTP API in `{error}`). */
export type ServerErrorCode =
  | 'bad_request'
  | 'unknown_type'
  | 'too_large'
  | 'not_joined'
  | 'forbidden'
  | 'room_limit'
  | 'rate_limited'
  | 'unavailable'
  | 'not_found'
  | 'internal';

/** A user's role in a room (v1.1). */
export type RoomRole = 'member' | 'moderator' | 'owner';

/** Why a socket was taken out of a room (v1.1). */
export type RemoveReason = 'removed' | 'kicked' | 'banned';

/** What an `update` changed (v1.1). */
export type ChangeKind = 'edit' | 'delete' | 'react';

/** How a join wants presence: every diff (`full`, the default) or only counts (v1.1). */
export type PresenceMode = 'full' | 'count';

export interface PresenceEntry {
  user: string;
  name: string;
}

export interface PresenceLeave {
  user: string;
}

export interface Reaction {
  key: string;
  count: number;
}

/** One row of the conversation list (v1.1). `ts` is absent for a room without messages. */
export interface RoomSummary {
  room: string;
  seq: number;
  read: number;
  unread: number;
  ts?: number;
}

/** A stored message: the `message` frame without `type`, and a `history` entry. */
export interface WireMessage {
  room: string;
  seq: number;
  from: string;
  name: string;
  cid: string;
  /** "" once deleted. */
  body: string;
  ts: number;
  meta?: JsonObject;
  /** v1.1: the revision of its last change (absent while 0). */
  rev?: number;
  edited_ts?: number;
  deleted?: boolean;
  reactions?: Reaction[];
}

/** A `history` entry: a message in its current state, with this user's reaction keys. */
export interface HistoryEntry extends WireMessage {
  mine?: string[];
}

// ---- server → client ---------------------------------------------------------------------

export interface JoinedFrame {
  type: 'joined';
  ref?: string;
  room: string;
  seq: number;
  read: number;
  presence: PresenceEntry[];
  presence_count?: number;
  presence_truncated?: boolean;
  replay_truncated?: boolean;
  role?: RoomRole;
  rev?: number;
  rev_truncated?: boolean;
}

export interface LeftFrame {
  type: 'left';
  ref?: string;
  room: string;
}

export interface MessageFrame extends WireMessage {
  type: 'message';
}

export interface UpdatedFrame {
  type: 'updated';
  ref?: string;
  room: string;
  seq: number;
  rev: number;
}

export interface UpdateFrame {
  type: 'update';
  room: string;
  seq: number;
  rev: number;
  change: ChangeKind;
  by: string;
  body?: string;
  meta?: JsonObject;
  edited_ts?: number;
  deleted?: boolean;
  reactions: Reaction[];
}

export interface AckFrame {
  type: 'ack';
  ref?: string;
  room: string;
  cid: string;
  seq: number;
  ts: number;
}

export interface HistoryFrame {
  type: 'history';
  ref?: string;
  room: string;
  messages: HistoryEntry[];
  more: boolean;
}

export interface PresenceFrame {
  type: 'presence';
  room: string;
  joins: PresenceEntry[];
  leaves: PresenceLeave[];
}

export interface PresencePageFrame {
  type: 'presence_page';
  ref?: string;
  room: string;
  users: PresenceEntry[];
  next?: string;
}

export interface PresenceCountFrame {
  type: 'presence_count';
  room: string;
  count: number;
}

export interface TypingFrame {
  type: 'typing';
  room: string;
  user: string;
}

export interface ReadFrame {
  type: 'read';
  ref?: string;
  room: string;
  seq: number;
}

export interface PongFrame {
  type: 'pong';
  ref?: string;
}

export interface ErrorFrame {
  type: 'error';
  ref?: string;
  code: ServerErrorCode;
  message: string;
}

export interface RemovedFrame {
  type: 'removed';
  room: string;
  reason: RemoveReason;
}

export interface KickedFrame {
  type: 'kicked';
  ref?: string;
  room: string;
  user: string;
}

export interface UnbannedFrame {
  type: 'unbanned';
  ref?: string;
  room: string;
  user: string;
}

export interface RoleSetFrame {
  type: 'role_set';
  ref?: string;
  room: string;
  user: string;
  role: RoomRole;
}

export interface RefreshedFrame {
  type: 'refreshed';
  ref?: string;
  /** The socket's expiry now, in seconds since the Unix epoch. */
  exp: number;
}

export interface EventFrame {
  type: 'event';
  data: JsonObject;
}

export interface InboxFrame {
  type: 'inbox';
  room: string;
  seq: number;
  from: string;
  name: string;
  ts: number;
}

export interface RoomsFrame {
  type: 'rooms';
  ref?: string;
  rooms: RoomSummary[];
}

/** Every frame the server sends, discriminated by `type`. */
export type ServerFrame =
  | JoinedFrame
  | LeftFrame
  | MessageFrame
  | UpdatedFrame
  | UpdateFrame
  | AckFrame
  | HistoryFrame
  | PresenceFrame
  | PresencePageFrame
  | PresenceCountFrame
  | TypingFrame
  | ReadFrame
  | PongFrame
  | ErrorFrame
  | RemovedFrame
  | KickedFrame
  | UnbannedFrame
  | RoleSetFrame
  | RefreshedFrame
  | EventFrame
  | InboxFrame
  | RoomsFrame;

/** The `type` of a server frame. */
export type ServerFrameType = ServerFrame['type'];

/** The server frame of one `type`. */
export type ServerFrameOf<T extends ServerFrameType> = Extract<ServerFrame, { type: T }>;

// ---- client → server ---------------------------------------------------------------------

export interface JoinRequest {
  type: 'join';
  ref?: string;
  room: string;
  since?: number;
  since_rev?: number;
  presence?: PresenceMode;
}

export interface PresenceRequest {
  type: 'presence';
  ref?: string;
  room: string;
  after?: string;
  limit?: number;
}

export interface LeaveRequest {
  type: 'leave';
  ref?: string;
  room: string;
}

export interface SendRequest {
  type: 'send';
  ref?: string;
  room: string;
  cid: string;
  body: string;
  meta?: JsonObject;
}

export interface EditRequest {
  type: 'edit';
  ref?: string;
  room: string;
  seq: number;
  body: string;
  meta?: JsonObject;
}

export interface DeleteRequest {
  type: 'delete';
  ref?: string;
  room: string;
  seq: number;
}

export interface ReactRequest {
  type: 'react';
  ref?: string;
  room: string;
  seq: number;
  key: string;
  on: boolean;
}

export interface HistoryRequest {
  type: 'history';
  ref?: string;
  room: string;
  before?: number;
  limit?: number;
}

export interface ReadRequest {
  type: 'read';
  ref?: string;
  room: string;
  seq: number;
}

export interface TypingRequest {
  type: 'typing';
  room: string;
}

export interface PingRequest {
  type: 'ping';
  ref?: string;
}

export interface RoomsRequest {
  type: 'rooms';
  ref?: string;
}

export interface KickRequest {
  type: 'kick';
  ref?: string;
  room: string;
  user: string;
  ban?: boolean;
}

export interface UnbanRequest {
  type: 'unban';
  ref?: string;
  room: string;
  user: string;
}

export interface SetRoleRequest {
  type: 'set_role';
  ref?: string;
  room: string;
  user: string;
  role: RoomRole;
}

export interface RefreshRequest {
  type: 'refresh';
  ref?: string;
  token: string;
}

/** Every frame a client sends, discriminated by `type`. */
export type ClientFrame =
  | JoinRequest
  | PresenceRequest
  | LeaveRequest
  | SendRequest
  | EditRequest
  | DeleteRequest
  | ReactRequest
  | HistoryRequest
  | ReadRequest
  | TypingRequest
  | PingRequest
  | RoomsRequest
  | KickRequest
  | UnbanRequest
  | SetRoleRequest
  | RefreshRequest;
