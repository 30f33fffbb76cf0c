// chatty.js: the reference browser client for the Chatty wire protocol v1 (chatty.v1.json),
// with the v1.1 roles and revocation: token refresh, `removed`, kick/ban/unban, room roles,
// and the v1.1 message lifecycle: meta, edit, delete, reactions.
// Dependency-free ES module. docs/client.md describes the API and the recovery model.
//
// The model in one paragraph: the client remembers, per joined room, the last seq it
// delivered. Whenever a socket opens it joins every room again with `since` = that seq, so
// the server replays exactly what was missed (nothing lost), and anything at or below it is
// dropped (nothing duplicated). Every send carries a client id (cid) and stays pending until
// acked; after a reconnect the pending ones are sent again with the same cid, which the server
// stores at most once.
//
// Changes to sent messages (edits, deletes, reactions) are numbered by a second per-room
// counter, `rev`. Each `update` frame is the whole new state of one message, so the client
// keeps only the rev last delivered per message (an update at or below it is stale) and a
// watermark `rev`: every change at or below it is known. A rejoin sends it as `since_rev` and
// the server replays the changes after it, like `since` does for messages.

const PROTOCOL = 'chatty.v1.json';
// Close codes after which reconnecting cannot help (see docs/protocol.md).
const FATAL_CLOSE = new Set([1000, 1002, 1007, 1009]);
const POLICY_CLOSE = 1008;
// The backend disconnected this user: reconnecting is the application's decision.
const DISCONNECTED_CLOSE = 4003;
// Send errors worth retrying with the same cid; any other code fails the send for good.
const RETRY_SEND = new Set(['unavailable', 'rate_limited', 'not_joined']);

export class ChattyClient {
  /**
   * @param {object} opts
   * @param {string} opts.url  ws(s):// URL of /ws, or a path such as '/ws' (resolved against the page)
   * @param {string | (() => string | Promise<string>)} opts.token  a JWT, or a function that
   *   returns a fresh one (called before every connection attempt, after a 1008 close, and
   *   `refreshLeadMs` before the current token's `exp` to `refresh` the open socket)
   */
  constructor({
    url,
    token,
    minBackoffMs = 250,
    maxBackoffMs = 10000,
    heartbeatMs = 20000,
    typingIntervalMs = 2000,
    refreshLeadMs = 30000,
    WebSocket: WS = globalThis.WebSocket,
  }) {
    this.url = url;
    this.token = token;
    this.opts = { minBackoffMs, maxBackoffMs, heartbeatMs, typingIntervalMs, refreshLeadMs };
    this.WS = WS;
    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    this.user = typeof token === 'string' ? tokenClaims(token).sub ?? null : null;
    /** The global roles of the current token (`admin` may moderate every room). */
    this.roles = typeof token === 'string' ? claimRoles(tokenClaims(token)) : [];
    this.refreshTimer = null;
    // room -> { since, rev, revs, joined, joinRef, presence: Map<user, name>, gap, typingAt, waiters, ... }
    this.roomState = new Map();
    // `${room}\n${cid}` -> { room, cid, body, ref, inflight, resolve, reject }: sends not yet acked.
    this.pending = new Map();
    // ref -> { frame, resolve, reject, resend }: requests waiting for their reply.
    this.requests = new Map();
    this.listeners = new Map();
    this.ws = null;
    this.attempt = 0;
    this.nextRef = 1;
    this.timer = null;
    this.heartbeat = null;
    this.lastFrameAt = 0;
  }

  // ---- events -------------------------------------------------------------------------

  /** Subscribe to an event; returns the function that unsubscribes. */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  /**
   * Subscribe to `inbox` events {room, seq, from, name, ts}: a message in a private room of
   * yours that this client has not joined. Returns the function that unsubscribes.
   */
  onInbox(fn) {
    return this.on('inbox', fn);
  }

  /** Subscribe to `event` events {data} (the personal channel). Returns the function that unsubscribes. */
  onEvent(fn) {
    return this.on('event', fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) ?? []) {
      // A throwing listener must not break the protocol state machine: rethrow it later.
      try {
        fn(detail);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  // ---- connection ---------------------------------------------------------------------

  /** Open the socket (and keep it open until close()). Returns this. */
  connect() {
    if (this.state === 'idle' || this.state === 'closed') {
      this.attempt = 0;
      this.open();
    }
    return this;
  }

  /** Close for good: no reconnect. Joined rooms and pending sends are kept for connect(). */
  close() {
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    this.timer = null;
    this.setState('closed', { reason: 'client' });
    this.drop(1000);
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit('state', { state, attempt: this.attempt, ...extra });
  }

  async open() {
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    let token;
    try {
      token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (e) {
      return this.retry({ reason: 'token', error: e });
    }
    if (this.state === 'closed') return;
    this.useToken(token);
    const u = new URL(this.url, globalThis.location?.href);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    u.searchParams.set('access_token', token);
    let ws;
    try {
      ws = new this.WS(u.toString(), PROTOCOL);
    } catch (e) {
      return this.retry({ reason: 'url', error: e });
    }
    this.ws = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (e) => this.onFrame(ws, e.data);
    // 'error' is always followed by 'close', which does the work.
    ws.onclose = (e) => this.onClose(ws, e.code, e.reason);
  }

  /** Take a token's user and roles, and plan its refresh (only a token function can give a newer one). */
  useToken(token) {
    const claims = tokenClaims(token);
    this.user = claims.sub ?? this.user;
    this.roles = claimRoles(claims);
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (typeof this.token !== 'function' || typeof claims.exp !== 'number') return;
    // Refresh `refreshLeadMs` before expiry, or halfway through a lifetime shorter than twice
    // that (never at once: a new token would be refreshed again at once, in a loop).
    const left = claims.exp * 1000 - Date.now();
    const delay = Math.max(left - this.opts.refreshLeadMs, left / 2, 0);
    const attempt = () =>
      this.refresh().catch(() => {
        // Refused or lost (a busy server, a closed socket): try once more while it is worth
        // it; after that the 1008 close brings a reconnect with a fresh token anyway.
        if (claims.exp * 1000 - Date.now() > 2000 && this.refreshTimer === null) {
          this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), 1000);
        }
      });
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      attempt();
    }, delay);
  }

  /**
   * Send a newer token on the open socket (from the token function) so it is not closed when
   * the current one expires. Resolves with the new `exp`. Called by itself before expiry.
   */
  async refresh() {
    if (typeof this.token !== 'function') throw new ChattyError('bad_request', 'refresh needs a token function');
    const token = await this.token();
    // Not resent after a reconnect: the new socket is opened with a fresh token anyway.
    const r = await this.request({ type: 'refresh', token }, false);
    if (!r) return null; // the socket closed meanwhile
    this.useToken(token);
    this.emit('refreshed', { exp: r.exp });
    return r.exp;
  }

  onOpen(ws) {
    if (ws !== this.ws) return;
    this.lastFrameAt = Date.now();
    ws.opened = true;
    this.setState('open');
    // A ping first: it is the server's "first frame" and its pong proves the socket works.
    this.raw({ type: 'ping', ref: 'hb' });
    this.heartbeat = setInterval(() => this.beat(), this.opts.heartbeatMs);
    // Rejoin every room with `since` (the recovery); sends resume once each room is joined.
    for (const room of this.roomState.keys()) this.sendJoin(room);
    // Replies lost with the old socket (history, read) are asked again: both are idempotent.
    for (const r of this.requests.values()) this.raw(r.frame);
  }

  beat() {
    // Browsers answer the server's pings themselves, but cannot tell us that a half-open TCP
    // connection died: our own ping must get an answer within two intervals.
    if (Date.now() - this.lastFrameAt > 2 * this.opts.heartbeatMs) return this.drop(null);
    this.raw({ type: 'ping', ref: 'hb' });
  }

  /** Forget the current socket now (without waiting for a close handshake). */
  drop(code) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(code ?? 1000);
    } catch {}
    this.onClose(ws, code ?? 1006, '', true);
  }

  onClose(ws, code, reason, dropped = false) {
    if (ws !== this.ws && !dropped) return;
    this.ws = null;
    clearInterval(this.heartbeat);
    for (const r of this.roomState.values()) r.joined = false;
    for (const p of this.pending.values()) p.inflight = false;
    for (const [ref, r] of this.requests) {
      if (!r.resend) {
        this.requests.delete(ref);
        r.resolve(null); // e.g. a leave: the server forgot the socket anyway
      }
    }
    // `opened`: false when the attempt never connected (refused, or the server is down).
    this.emit('disconnect', { code, reason, opened: !!ws.opened });
    if (this.state === 'closed') return;
    if (FATAL_CLOSE.has(code)) return this.setState('closed', { reason: 'server', code });
    if (code === DISCONNECTED_CLOSE) return this.setState('closed', { reason: 'disconnected', code });
    if (code === POLICY_CLOSE && typeof this.token !== 'function') {
      // A fixed token that the server refused will be refused again.
      return this.setState('closed', { reason: 'policy', code });
    }
    this.retry({ code });
  }

  retry(extra) {
    // Exponential backoff with "equal jitter": half fixed, half random, so that a restarted
    // server is not hit by every client in the same millisecond.
    const { minBackoffMs, maxBackoffMs } = this.opts;
    const cap = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(this.attempt, 16));
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.attempt += 1;
    this.setState('reconnecting', { delay, ...extra });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.open();
    }, delay);
  }

  /** Reconnect now instead of waiting for the backoff timer (e.g. when the page comes back online). */
  reconnectNow() {
    if (this.timer !== null && this.state === 'reconnecting') {
      clearTimeout(this.timer);
      this.timer = null;
      this.open();
    }
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  ref() {
    return `r${this.nextRef++}`;
  }

  // ---- rooms --------------------------------------------------------------------------

  /**
   * Join a room. Resolves with the first `joined` ({room, seq, read, presence, presenceCount,
   * presenceTruncated}); the client rejoins by itself after every reconnect (a `joined` event
   * with rejoin: true). `{presence: 'count'}`: no presence diffs for this room, only
   * `presenceCount` events (at most one a second) — for big rooms that show a number.
   * Changes to messages come as `update` events {room, seq, rev, change, by, body?, meta?,
   * edited_ts?, deleted?, reactions}: the message's whole new state, each rev once and never
   * older than what was delivered for that seq. After a rejoin that missed too many
   * (`revTruncated`), changed messages already delivered come again with change 'reload'
   * (no `by`; `mine`: this user's reaction keys).
   */
  join(room, { presence = 'full' } = {}) {
    let r = this.roomState.get(room);
    if (!r) {
      r = {
        mode: presence,
        count: 0, // users present, as the server last said or the diffs since imply
        truncated: false, // `presence` holds only part of the room (page the rest)
        since: null, // null until the first `joined`: then the last seq delivered
        joined: false,
        joinRef: null,
        presence: new Map(),
        gap: null, // set by a truncated replay until its first message says where it starts
        rev: null, // the watermark: every change at or below it was delivered (sent as since_rev)
        revs: new Map(), // seq -> rev of the state last delivered for that message
        low: null, // the lowest seq delivered: how far back a rev_truncated reload goes
        loading: 0, // history pages on their way
        fresh: new Map(), // seq -> update that arrived while a page was on its way (may be newer)
        reload: null, // {upTo, rev} while a rev_truncated rejoin reloads what it delivered
        info: null, // the last `joined`, as reported
        typingAt: 0,
        waiters: [],
      };
      this.roomState.set(room, r);
      this.sendJoin(room);
    }
    if (r.info) return Promise.resolve(r.info);
    return new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
  }

  sendJoin(room) {
    const r = this.roomState.get(room);
    r.joinRef = this.ref();
    const frame = { type: 'join', ref: r.joinRef, room };
    if (r.since !== null) frame.since = r.since;
    if (r.since !== null && r.rev !== null) frame.since_rev = r.rev;
    if (r.mode === 'count') frame.presence = 'count';
    this.raw(frame);
  }

  /** Leave a room: its live messages stop and its unacked sends fail with code 'left'. */
  leave(room) {
    const r = this.roomState.get(room);
    if (!r) return Promise.resolve(null);
    this.roomState.delete(room);
    for (const w of r.waiters) w.reject(new ChattyError('left', 'left before joining'));
    for (const p of [...this.pending.values()]) {
      if (p.room === room) this.failSend(p, 'left', 'left the room');
    }
    if (!r.joined) return Promise.resolve(null);
    return this.request({ type: 'leave', room }, false);
  }

  /** The rooms joined (or being joined). */
  get joinedRooms() {
    return [...this.roomState.keys()];
  }

  // ---- requests -----------------------------------------------------------------------

  /** A request answered by a frame with the same ref. `resend`: ask again after a reconnect. */
  request(frame, resend = true) {
    const ref = this.ref();
    frame = { ...frame, ref };
    return new Promise((resolve, reject) => {
      this.requests.set(ref, { frame, resolve, reject, resend });
      this.raw(frame);
    });
  }

  /**
   * Older messages: resolves {messages (oldest first), more}. Each carries its current state
   * (`rev`, `edited_ts`, `deleted`, `reactions`, `mine`: this user's reaction keys).
   */
  async history(room, { before, limit = 50 } = {}) {
    const h = await this.page(room, before, limit);
    const r = this.roomState.get(room);
    if (r) for (const m of h.messages) this.noteDelivered(r, m);
    return h;
  }

  /** One history page, patched with the updates that overtook it. */
  async page(room, before, limit) {
    const frame = { type: 'history', room, limit };
    if (before != null) frame.before = before;
    // The server may read the page before a change that it then sends us before the page:
    // such updates are kept while pages are on their way, and win over an older entry.
    const r = this.roomState.get(room);
    if (r) r.loading += 1;
    let h;
    try {
      h = await this.request(frame);
    } finally {
      if (r) r.loading -= 1;
    }
    const messages = h.messages.map((m) => {
      const u = r?.fresh.get(m.seq);
      return u && u.rev > (m.rev ?? 0) ? { ...withoutState(m), ...stateOf(u), room } : { ...m, room };
    });
    if (r && r.loading === 0) r.fresh.clear();
    return { messages, more: h.more };
  }

  noteDelivered(r, m) {
    if ((m.rev ?? 0) > (r.revs.get(m.seq) ?? 0)) r.revs.set(m.seq, m.rev);
    if (r.low === null || m.seq < r.low) r.low = m.seq;
  }

  /**
   * One page of who is present in a joined room, in user id order: resolves {users, next};
   * pass `next` as `after` for the following page (absent on the last). For rooms whose
   * `joined` said presenceTruncated.
   */
  async presencePage(room, { after, limit } = {}) {
    const frame = { type: 'presence', room };
    if (after != null) frame.after = after;
    if (limit != null) frame.limit = limit;
    const p = await this.request(frame);
    return { users: p.users, next: p.next ?? null };
  }

  /** Move the read marker (it never moves backwards). Resolves with the marker as stored. */
  async read(room, seq) {
    const r = await this.request({ type: 'read', room, seq });
    return r?.seq;
  }

  /**
   * The conversation list (v1.1): the rooms you are a member of or hold a read marker in,
   * most recently active first, as `[{room, seq, read, unread, ts}]` (`unread` = seq - read).
   */
  async rooms() {
    const r = await this.request({ type: 'rooms' });
    return r?.rooms ?? [];
  }

  // ---- moderation (v1.1) ------------------------------------------------------------------

  /** Take `user` out of `room` on every node; `{ban: true}` keeps them out. Needs the role. */
  async kick(room, user, { ban = false } = {}) {
    await this.request({ type: 'kick', room, user, ban }, false);
  }

  /** Lift a ban. Needs the role. */
  async unban(room, user) {
    await this.request({ type: 'unban', room, user }, false);
  }

  /** Give `user` the room role 'member', 'moderator' or 'owner' (owners and admins). */
  async setRole(room, user, role) {
    await this.request({ type: 'set_role', room, user, role }, false);
  }

  /** May this user kick and ban in `room`: an admin token, or a moderator or owner role there. */
  canModerate(room) {
    const role = this.roomState.get(room)?.info?.role;
    return this.roles.includes('admin') || role === 'moderator' || role === 'owner';
  }

  /** Tell the room this user is typing; throttled, so call it on every keystroke. */
  typing(room) {
    const r = this.roomState.get(room);
    const now = Date.now();
    if (!r?.joined || now - r.typingAt < this.opts.typingIntervalMs) return;
    r.typingAt = now;
    this.raw({ type: 'typing', room });
  }

  // ---- the message lifecycle (v1.1) ------------------------------------------------------

  /**
   * Change the body of one's own message; `meta` replaces the old meta (absent: kept).
   * Resolves {seq, rev} once committed; the new state comes as an `update` event, as for
   * everyone in the room.
   */
  edit(room, seq, body, { meta } = {}) {
    const frame = { type: 'edit', room, seq, body };
    if (meta != null) frame.meta = meta;
    return this.change(frame);
  }

  /** Delete a message (one's own, or any as a moderator, owner or admin): it stays as a tombstone. */
  delete(room, seq) {
    return this.change({ type: 'delete', room, seq });
  }

  /** Add (`on` true) or remove this user's reaction `key` (an emoji or a short name). */
  react(room, seq, key, on = true) {
    return this.change({ type: 'react', room, seq, key, on: !!on });
  }

  async change(frame) {
    // Each sets a state rather than toggling one (a repeat changes nothing), so it may be
    // asked again after a reconnect like history.
    const u = await this.request(frame);
    // Not a rev to apply: the `update` frame of this rev brings the state.
    return { seq: u.seq, rev: u.rev };
  }

  // ---- sending ------------------------------------------------------------------------

  /**
   * Send a message. Returns the optimistic copy {room, cid, body, meta?, from, pending: true,
   * acked} at once; `acked` resolves with {seq, ts} once the server has committed it. The
   * server's `message` event for it carries the same cid (replace the optimistic copy with it).
   * `meta`: a small JSON object stored with the message (e.g. {reply_to: seq}).
   */
  send(room, body, { meta } = {}) {
    if (!this.roomState.has(room)) throw new ChattyError('not_joined', `join ${room} first`);
    const cid = newCid();
    // Others stop showing "typing" when our message lands: the next keystroke must tell again.
    this.roomState.get(room).typingAt = 0;
    const p = { room, cid, body, meta: meta ?? null, ref: null, inflight: false };
    p.acked = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.acked.catch(() => {}); // failures are also reported as 'failed' events
    this.pending.set(pendingKey(room, cid), p);
    this.transmit(p);
    return { room, cid, body, ...(p.meta && { meta: p.meta }), from: this.user, pending: true, acked: p.acked };
  }

  transmit(p) {
    if (p.inflight || !this.roomState.get(p.room)?.joined) return; // sent on the next `joined`
    p.ref = this.ref();
    const frame = { type: 'send', ref: p.ref, room: p.room, cid: p.cid, body: p.body };
    if (p.meta) frame.meta = p.meta;
    p.inflight = this.raw(frame);
  }

  failSend(p, code, message) {
    this.pending.delete(pendingKey(p.room, p.cid));
    p.reject(new ChattyError(code, message));
    this.emit('failed', { room: p.room, cid: p.cid, body: p.body, code, message });
  }

  /** Sends not yet acknowledged, oldest first. */
  pendingSends(room) {
    return [...this.pending.values()]
      .filter((p) => room === undefined || p.room === room)
      .map(({ room, cid, body, meta }) => ({ room, cid, body, ...(meta && { meta }) }));
  }

  // ---- incoming frames ----------------------------------------------------------------

  onFrame(ws, data) {
    if (ws !== this.ws) return;
    this.lastFrameAt = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    switch (f.type) {
      case 'joined':
        return this.onJoined(f);
      case 'message':
        return this.onMessage(f);
      case 'ack':
        return this.onAck(f);
      case 'update':
        return this.onUpdate(f);
      case 'presence':
        return this.onPresence(f);
      case 'presence_count': {
        const r = this.roomState.get(f.room);
        if (r) {
          r.count = f.count;
          this.emit('presenceCount', { room: f.room, count: f.count });
        }
        return;
      }
      case 'typing':
        if (f.user !== this.user && this.roomState.has(f.room)) this.emit('typing', { room: f.room, user: f.user });
        return;
      case 'read':
        if (this.roomState.has(f.room)) this.emit('read', { room: f.room, seq: f.seq });
        return this.reply(f.ref, f);
      case 'pong':
        // The first answer on a socket proves it works: the backoff starts over.
        this.attempt = 0;
        return this.reply(f.ref, f);
      case 'error':
        return this.onError(f);
      case 'removed':
        return this.onRemoved(f);
      case 'event':
        // The personal channel (v1.1): the backend's event for this user, on every tab.
        return this.emit('event', { data: f.data });
      case 'inbox':
        // v1.1: a message in a private room of ours that this socket has not joined (no body:
        // join the room to read it). A joined room's messages come as `message` instead.
        if (typeof f.room !== 'string' || !Number.isSafeInteger(f.seq) || this.roomState.has(f.room)) return;
        return this.emit('inbox', { room: f.room, seq: f.seq, from: f.from, name: f.name, ts: f.ts });
      default: // history, left, and frames of future extensions
        return this.reply(f.ref, f);
    }
  }

  reply(ref, f) {
    const r = ref && this.requests.get(ref);
    if (!r) return;
    this.requests.delete(ref);
    r.resolve(f);
  }

  onJoined(f) {
    const r = this.roomState.get(f.room);
    if (!r || f.ref !== r.joinRef) return; // left meanwhile, or an answer to an older join
    const rejoin = r.since !== null;
    // A head below what we saw means the server lost or reset the room (a dev database
    // wiped): start over from its head rather than drop every new message as a duplicate.
    // A revision below what we saw says the same.
    const reset = rejoin && (f.seq < r.since || (f.rev != null && r.rev !== null && f.rev < r.rev));
    const upTo = r.since;
    if (!rejoin || reset) r.since = f.seq;
    let reload = null;
    if (!rejoin || reset) {
      // What the application loads from here on shows every change up to f.rev at least.
      r.rev = f.rev ?? null;
      r.revs.clear();
      r.fresh.clear();
      r.low = null;
      r.reload = null;
    } else {
      // More changes were missed than the server replays: what was delivered is reloaded with
      // history. Until that is done the watermark stays put, so that a reconnect meanwhile
      // asks again from there. Without the flag the replay covers everything, even what an
      // interrupted reload had yet to do.
      r.reload = reload = f.rev_truncated ? { upTo, rev: f.rev ?? 0 } : null;
    }
    // More was missed than the server replays: the replay starts later than `since`, and the
    // hole is paged in with history once the first replayed seq tells where it ends.
    r.gap = f.replay_truncated && !reset ? { after: r.since } : null;
    r.joined = true;
    r.presence = new Map(f.presence.map((p) => [p.user, p.name]));
    r.count = f.presence_count ?? f.presence.length;
    r.truncated = !!f.presence_truncated;
    this.attempt = 0;
    const info = {
      room: f.room,
      seq: f.seq,
      read: f.read,
      presence: presenceList(r.presence),
      presenceCount: r.count,
      presenceTruncated: r.truncated,
      rejoin,
      reset,
      replayTruncated: !!f.replay_truncated,
      rev: f.rev ?? null,
      revTruncated: !!f.rev_truncated,
      role: f.role ?? 'member',
    };
    r.info = info;
    for (const w of r.waiters.splice(0)) w.resolve(info);
    this.emit('joined', info);
    this.emit('presence', {
      room: f.room,
      users: info.presence,
      joins: [],
      leaves: [],
      count: r.count,
      truncated: r.truncated,
    });
    for (const p of this.pending.values()) if (p.room === f.room) this.transmit(p);
    if (reload) this.reloadChanged(f.room, r, reload);
  }

  onMessage(f) {
    const r = this.roomState.get(f.room);
    if (!r || r.since === null || f.seq <= r.since) return; // not ours, or a duplicate
    if (r.gap) {
      this.fillGap(f.room, r, r.gap.after, f.seq);
      r.gap = null;
    }
    r.since = f.seq;
    // Its rev does not move the watermark: updates of older messages, replayed after these
    // messages, may still be on their way.
    this.noteDelivered(r, f);
    const { type, ...m } = f;
    this.deliver(m, false);
  }

  onUpdate(f) {
    const r = this.roomState.get(f.room);
    if (!r || r.since === null || !Number.isSafeInteger(f.rev)) return;
    // Updates come in rev order, each with the whole current state: once rev N has arrived,
    // every change up to N is known or superseded by one still to come.
    if (r.reload) r.reload.rev = Math.max(r.reload.rev, f.rev);
    else r.rev = Math.max(r.rev ?? 0, f.rev);
    if (r.loading > 0 && f.rev > (r.fresh.get(f.seq)?.rev ?? 0)) r.fresh.set(f.seq, f);
    if (f.rev <= (r.revs.get(f.seq) ?? 0)) return; // this state, or a newer one, was delivered
    r.revs.set(f.seq, f.rev);
    const { type, ...u } = f;
    this.emit('update', u);
  }

  /**
   * After a rejoin that missed more changes than the server replays: page again, newest first,
   * through what was delivered (down to the lowest seq handed out) and deliver each message
   * whose state moved on as an `update` with change 'reload'. Then the watermark moves on.
   */
  async reloadChanged(room, r, reload) {
    const current = () => this.roomState.get(room) === r && r.reload === reload;
    try {
      let before = reload.upTo + 1;
      while (current() && r.low !== null && before > r.low) {
        const h = await this.page(room, before, 200);
        if (!current()) return;
        for (const m of h.messages) {
          if (m.seq < r.low || (m.rev ?? 0) <= (r.revs.get(m.seq) ?? 0)) continue;
          r.revs.set(m.seq, m.rev);
          this.emit('update', { room, seq: m.seq, change: 'reload', ...stateOf(m), mine: m.mine ?? [] });
        }
        if (!h.more || h.messages.length === 0) break;
        before = h.messages[0].seq;
      }
      if (!current()) return;
      r.rev = Math.max(r.rev ?? 0, reload.rev);
      r.reload = null;
    } catch (e) {
      // The watermark stays behind: the next rejoin asks again from there.
      this.emit('error', { room, code: e.code ?? 'internal', message: `history: ${e.message}` });
    }
  }

  deliver(m, recovered) {
    const own = m.from === this.user;
    const p = own && this.pending.get(pendingKey(m.room, m.cid));
    if (p) {
      this.pending.delete(pendingKey(m.room, m.cid));
      p.resolve({ seq: m.seq, ts: m.ts });
    }
    this.emit('message', { ...m, own, recovered });
  }

  /** Page in the messages in (after, before) that a truncated replay skipped. */
  async fillGap(room, r, after, before) {
    try {
      // History requests survive reconnects, so this finishes even across a flap.
      while (before > after + 1 && this.roomState.get(room) === r) {
        const h = await this.history(room, { before, limit: 200 });
        const missing = h.messages.filter((m) => m.seq > after);
        // Newest page first: the UI places each message by its seq.
        for (const m of missing) this.deliver(m, true);
        if (!h.more || missing.length < h.messages.length || h.messages.length === 0) break;
        before = h.messages[0].seq;
      }
    } catch (e) {
      this.emit('error', { room, code: e.code ?? 'internal', message: `history: ${e.message}` });
    }
  }

  onAck(f) {
    const p = this.pending.get(pendingKey(f.room, f.cid));
    if (!p) return;
    this.pending.delete(pendingKey(f.room, f.cid));
    p.resolve({ seq: f.seq, ts: f.ts });
    this.emit('ack', { room: f.room, cid: f.cid, seq: f.seq, ts: f.ts });
  }

  /** This socket was taken out of the room (kicked, banned, or no longer a member): the room
   * is forgotten (no rejoin after a reconnect) and its unacked sends fail. */
  onRemoved(f) {
    const r = this.roomState.get(f.room);
    if (!r) return;
    this.roomState.delete(f.room);
    for (const w of r.waiters.splice(0)) w.reject(new ChattyError('removed', f.reason));
    for (const p of [...this.pending.values()]) {
      if (p.room === f.room) this.failSend(p, 'removed', `removed from the room (${f.reason})`);
    }
    this.emit('removed', { room: f.room, reason: f.reason });
  }

  onPresence(f) {
    const r = this.roomState.get(f.room);
    if (!r) return;
    // Diffs are set operations: they may repeat what `joined` already said.
    for (const l of f.leaves) r.presence.delete(l.user);
    if (r.truncated) {
      // The map holds only part of the room, so the count follows the diffs (a rename, which
      // shows as a join of a present user, is the one thing it cannot tell apart).
      const arrived = f.joins.filter((j) => !r.presence.has(j.user)).length;
      r.count = Math.max(0, r.count + arrived - f.leaves.length);
    } else {
      for (const j of f.joins) r.presence.set(j.user, j.name);
      r.count = r.presence.size;
    }
    this.emit('presence', {
      room: f.room,
      users: presenceList(r.presence),
      joins: f.joins,
      leaves: f.leaves,
      count: r.count,
      truncated: r.truncated,
    });
  }

  onError(f) {
    const err = new ChattyError(f.code, f.message);
    // A join?
    for (const [room, r] of this.roomState) {
      if (f.ref && r.joinRef === f.ref) {
        if (f.code === 'unavailable') {
          // The store is busy: ask again shortly, on this socket if it is still up.
          const ws = this.ws;
          setTimeout(() => ws === this.ws && this.roomState.get(room) === r && this.sendJoin(room), 1000);
        } else {
          for (const w of r.waiters.splice(0)) w.reject(err);
          this.leave(room);
          this.emit('error', { room, code: f.code, message: f.message });
        }
        return;
      }
    }
    // A send?
    for (const p of this.pending.values()) {
      if (f.ref && p.ref === f.ref) {
        p.inflight = false;
        if (!RETRY_SEND.has(f.code)) return this.failSend(p, f.code, f.message);
        // Same cid later: the server stores it at most once.
        const ws = this.ws;
        setTimeout(() => ws === this.ws && this.transmit(p), 1000);
        return;
      }
    }
    const r = f.ref && this.requests.get(f.ref);
    if (r) {
      this.requests.delete(f.ref);
      return r.reject(err);
    }
    this.emit('error', { code: f.code, message: f.message });
  }
}

export class ChattyError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Shorthand: `connect({url, token})` creates a client and opens it. */
export function connect(opts) {
  return new ChattyClient(opts).connect();
}

function pendingKey(room, cid) {
  return `${room}\n${cid}`;
}

// The fields of a message that an `update` replaces as a whole.
const STATE = ['rev', 'body', 'meta', 'edited_ts', 'deleted', 'reactions'];

function stateOf(m) {
  const s = { reactions: [] };
  for (const k of STATE) if (m[k] !== undefined) s[k] = m[k];
  return s;
}

function withoutState(m) {
  const rest = { ...m };
  for (const k of STATE) delete rest[k];
  return rest;
}

function presenceList(map) {
  return [...map].map(([user, name]) => ({ user, name }));
}

/** A cid unique per (room, user): time plus 64 random bits, in the protocol's alphabet. */
function newCid() {
  const b = new Uint8Array(8);
  globalThis.crypto.getRandomValues(b);
  return `c${Date.now().toString(36)}-${[...b].map((x) => x.toString(16).padStart(2, '0')).join('')}`;
}

function claimRoles(claims) {
  return Array.isArray(claims.roles) ? claims.roles.filter((r) => typeof r === 'string') : [];
}

/** The claims of a JWT, unverified (only to know our own user id, roles and expiry). */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(part + '='.repeat((4 - (part.length % 4)) % 4));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}
