// Generated from clients/js (@chatty/client) by `npm run web`: do not edit here.
// @chatty/client: the typed client of the Chatty wire protocol (v1 with the v1.1 additions),
// for browsers and Node >= 20, in JSON or MessagePack. A port of web/chatty.js, the reference
// browser client, with the same behaviour and names.
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
//
// This file is the whole runtime: it imports nothing (the types below are erased), so the
// compiled dist/index.js can be loaded by a page as it is. The one import is the optional,
// dynamic one of `@msgpack/msgpack`, made only for `encoding: 'msgpack'` without a `codec`.
/** The subprotocol of each encoding. */
export const SUBPROTOCOLS = {
    json: 'chatty.v1.json',
    msgpack: 'chatty.v1.msgpack',
};
/** The close codes of the protocol (docs/protocol.md). */
export const CloseCode = {
    NORMAL: 1000,
    GOING_AWAY: 1001,
    PROTOCOL_ERROR: 1002,
    ABNORMAL: 1006,
    INVALID_PAYLOAD: 1007,
    POLICY: 1008,
    TOO_BIG: 1009,
    INTERNAL: 1011,
    TRY_AGAIN_LATER: 1013,
    SLOW_CONSUMER: 4000,
    IDLE: 4001,
    DISCONNECTED: 4003,
};
// Close codes after which reconnecting cannot help.
const FATAL_CLOSE = new Set([
    CloseCode.NORMAL,
    CloseCode.PROTOCOL_ERROR,
    CloseCode.INVALID_PAYLOAD,
    CloseCode.TOO_BIG,
]);
// Send errors worth retrying with the same cid; any other code fails the send for good.
const RETRY_SEND = new Set(['unavailable', 'rate_limited', 'not_joined']);
// How many per-message revisions a room remembers (older ones are forgotten first).
const REVS_MAX = 10_000;
const CID_RE = /^[A-Za-z0-9._:-]{1,64}$/;
const OPEN = 1; // WebSocket.OPEN
/** Every rejection of the client: the protocol's error `code` (or a client one) and the `ref`
 * of the request it answers, when there was one. */
export class ChattyError extends Error {
    code;
    ref;
    constructor(code, message, ref) {
        super(message);
        this.name = 'ChattyError';
        this.code = code;
        this.ref = ref;
    }
}
/** How long a socket must stay open before the reconnect backoff starts over. */
const STABLE_MS = 5000;
/** The longest delay setTimeout keeps (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;
// ---- the client --------------------------------------------------------------------------
export class ChattyClient {
    /** The socket URL. */
    url;
    /** The encoding spoken. */
    encoding;
    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
    state = 'idle';
    /** This user's id, from the token's `sub`. */
    user;
    /** The global roles of the current token (`admin` may moderate every room). */
    roles;
    token;
    opts;
    WS;
    codec;
    refreshTimer = null;
    roomState = new Map();
    // `${room}\n${cid}` -> sends not yet acked, oldest first.
    pending = new Map();
    // ref -> requests waiting for their reply.
    requests = new Map();
    listeners = new Map();
    ws = null;
    wsOpened = false;
    attempt = 0;
    nextRef = 1;
    timer = null;
    stableTimer = null;
    // Bumped by every open(): an older one still awaiting its token gives up.
    generation = 0;
    // The one-second retries of joins and sends refused for now: cleared by close().
    retries = new Set();
    heartbeat = null;
    lastFrameAt = 0;
    // Binary frames that arrive as Blobs are decoded asynchronously: this keeps them in order.
    inbound = Promise.resolve();
    constructor(options) {
        const { url, token, encoding = 'json', codec, WebSocket: WS = globalThis.WebSocket, minBackoffMs = 250, maxBackoffMs = 10000, heartbeatMs = 20000, typingIntervalMs = 2000, refreshLeadMs = 30000, maxPendingSends = 1000, maxPendingRequests = 1000, } = options;
        if (!WS) {
            throw new ChattyError('unsupported', 'no WebSocket implementation: pass one as the WebSocket option (e.g. the ws package)');
        }
        if (!Object.hasOwn(SUBPROTOCOLS, encoding)) {
            throw new ChattyError('bad_request', `unknown encoding ${encoding}`);
        }
        this.url = url;
        this.token = token;
        this.encoding = encoding;
        this.codec = codec ?? null;
        this.WS = WS;
        this.opts = {
            minBackoffMs,
            maxBackoffMs,
            heartbeatMs,
            typingIntervalMs,
            refreshLeadMs,
            maxPendingSends,
            maxPendingRequests,
        };
        const claims = typeof token === 'string' ? tokenClaims(token) : {};
        this.user = typeof claims.sub === 'string' ? claims.sub : null;
        this.roles = claimRoles(claims);
    }
    // ---- events -----------------------------------------------------------------------------
    /** Subscribe to an event; returns the function that unsubscribes. */
    on(type, fn) {
        let set = this.listeners.get(type);
        if (!set)
            this.listeners.set(type, (set = new Set()));
        set.add(fn);
        return () => this.off(type, fn);
    }
    /** Unsubscribe a function given to `on`. */
    off(type, fn) {
        this.listeners.get(type)?.delete(fn);
    }
    /** Subscribe to `inbox` events: a message in a private room of yours this client has not joined. */
    onInbox(fn) {
        return this.on('inbox', fn);
    }
    /** Subscribe to `event` events {data} (the personal channel). */
    onEvent(fn) {
        return this.on('event', fn);
    }
    emit(type, detail) {
        const set = this.listeners.get(type);
        if (!set)
            return;
        for (const fn of [...set]) {
            // A throwing listener must not break the protocol state machine: rethrow it later.
            try {
                fn(detail);
            }
            catch (e) {
                queueMicrotask(() => {
                    throw e;
                });
            }
        }
    }
    // ---- connection ---------------------------------------------------------------------------
    /** Open the socket (and keep it open until close()). Returns this. */
    connect() {
        if (this.state === 'idle' || this.state === 'closed') {
            this.attempt = 0;
            void this.open();
        }
        return this;
    }
    /**
     * Resolves once the socket is open (at once if it is); rejects with a ChattyError if the
     * client closes for good first, or after `timeoutMs` when given.
     */
    opened(timeoutMs) {
        if (this.state === 'open')
            return Promise.resolve();
        if (this.state === 'closed')
            return Promise.reject(new ChattyError('disconnected', 'closed: call connect() first'));
        return new Promise((resolve, reject) => {
            let timer = null;
            const off = this.on('state', ({ state, reason, code }) => {
                if (state === 'open')
                    done();
                else if (state === 'closed')
                    done(new ChattyError('disconnected', `closed (${reason ?? code ?? 'unknown'})`));
            });
            const done = (e) => {
                off();
                if (timer !== null)
                    clearTimeout(timer);
                if (e)
                    reject(e);
                else
                    resolve();
            };
            if (timeoutMs !== undefined) {
                timer = setTimeout(() => done(new ChattyError('disconnected', `not open within ${timeoutMs} ms`)), timeoutMs);
            }
        });
    }
    /** Close for good: no reconnect. Joined rooms and pending sends are kept for connect(). */
    close() {
        this.clearTimers();
        this.setState('closed', { reason: 'client' });
        this.drop(CloseCode.NORMAL);
    }
    /** Reconnect now instead of waiting for the backoff timer (e.g. when the page comes back online). */
    reconnectNow() {
        if (this.timer !== null && this.state === 'reconnecting') {
            clearTimeout(this.timer);
            this.timer = null;
            void this.open();
        }
    }
    clearTimers() {
        if (this.timer !== null)
            clearTimeout(this.timer);
        if (this.refreshTimer !== null)
            clearTimeout(this.refreshTimer);
        if (this.stableTimer !== null)
            clearTimeout(this.stableTimer);
        for (const t of this.retries)
            clearTimeout(t);
        this.retries.clear();
        this.timer = null;
        this.refreshTimer = null;
        this.stableTimer = null;
    }
    /** Run `f` in a second, unless the client is closed first. */
    later(f) {
        const t = setTimeout(() => {
            this.retries.delete(t);
            f();
        }, 1000);
        this.retries.add(t);
    }
    setState(state, extra = {}) {
        this.state = state;
        if (state === 'closed')
            this.clearTimers();
        this.emit('state', { state, attempt: this.attempt, ...extra });
    }
    async open() {
        // Each open is one generation: a close() and connect() while this one awaits the codec or
        // the token starts another, and this one must then stop rather than open a second socket.
        const generation = ++this.generation;
        const stale = () => this.state === 'closed' || generation !== this.generation;
        this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
        if (this.encoding === 'msgpack' && !this.codec) {
            try {
                this.codec = await loadMsgpack();
            }
            catch (e) {
                const message = `cannot load @msgpack/msgpack: ${errorMessage(e)}`;
                this.emit('error', { code: 'codec', message });
                this.setState('closed', { reason: 'codec', error: e });
                // No socket can open without it: nothing that waits for one would ever be answered.
                for (const [room, r] of [...this.roomState])
                    if (!r.info)
                        this.forget(room, r, 'codec', message);
                for (const p of [...this.pending.values()])
                    this.failSend(p, 'codec', message);
                for (const [ref, q] of [...this.requests]) {
                    this.requests.delete(ref);
                    q.reject(new ChattyError('codec', message, ref));
                }
                return;
            }
            if (stale())
                return;
        }
        let token;
        try {
            token = typeof this.token === 'function' ? await this.token() : this.token;
        }
        catch (e) {
            if (!stale())
                this.retry({ reason: 'token', error: e });
            return;
        }
        if (stale())
            return;
        if (typeof this.token === 'string') {
            // A fixed token past its expiry would be refused at every attempt.
            const exp = tokenClaims(token).exp;
            if (typeof exp === 'number' && exp * 1000 <= Date.now()) {
                this.setState('closed', { reason: 'expired' });
                return;
            }
        }
        this.useToken(token);
        let ws;
        try {
            const base = globalThis.location?.href;
            const u = new URL(this.url, base);
            if (u.protocol === 'http:')
                u.protocol = 'ws:';
            if (u.protocol === 'https:')
                u.protocol = 'wss:';
            u.searchParams.set('access_token', token);
            ws = new this.WS(u.toString(), SUBPROTOCOLS[this.encoding]);
        }
        catch (e) {
            this.retry({ reason: 'url', error: e });
            return;
        }
        this.ws = ws;
        this.wsOpened = false;
        try {
            ws.binaryType = 'arraybuffer';
        }
        catch {
            // Some implementations have no binaryType; Blob and Buffer data are handled too.
        }
        ws.onopen = () => this.onOpen(ws);
        ws.onmessage = (e) => this.onData(ws, e.data);
        // 'error' is always followed by 'close', which does the work (the handler must exist:
        // the ws package throws an 'error' nobody listens to).
        ws.onerror = noop;
        ws.onclose = (e) => this.onClose(ws, e.code, e.reason);
    }
    /** Take a token's user and roles, and plan its refresh (only a token function can give a newer one). */
    useToken(token) {
        const claims = tokenClaims(token);
        if (typeof claims.sub === 'string')
            this.user = claims.sub;
        this.roles = claimRoles(claims);
        if (this.refreshTimer !== null)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
        const exp = claims.exp;
        if (typeof this.token !== 'function' || typeof exp !== 'number')
            return;
        // Refresh `refreshLeadMs` before expiry, or halfway through a lifetime shorter than twice
        // that (never at once: a new token would be refreshed again at once, in a loop).
        const left = exp * 1000 - Date.now();
        // Too late to be worth it (e.g. a token function that returns the same token again):
        // the 1008 close at expiry brings a reconnect with a fresh token instead of a refresh loop.
        if (left < 500)
            return;
        const delay = Math.max(left - this.opts.refreshLeadMs, left / 2);
        if (delay > MAX_TIMER_MS) {
            // Timers fire at once past 2^31-1 ms (about 24.8 days): wait that long, then plan again.
            this.refreshTimer = setTimeout(() => {
                this.refreshTimer = null;
                this.useToken(token);
            }, MAX_TIMER_MS);
            return;
        }
        const attempt = () => this.refresh().catch(() => {
            // Refused or lost (a busy server, a closed socket): try once more while it is worth
            // it; after that the 1008 close brings a reconnect with a fresh token anyway.
            if (exp * 1000 - Date.now() > 2000 && this.refreshTimer === null && this.state !== 'closed') {
                this.refreshTimer = setTimeout(() => {
                    this.refreshTimer = null;
                    this.refresh().catch(noop);
                }, 1000);
            }
        });
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = null;
            void attempt();
        }, delay);
    }
    /**
     * Send a newer token on the open socket (from the token function) so it is not closed when
     * the current one expires. Resolves with the new `exp` (seconds). Called by itself before
     * expiry; rejects with a ChattyError (`forbidden` for a token the server refuses).
     */
    async refresh() {
        if (typeof this.token !== 'function')
            throw new ChattyError('bad_request', 'refresh needs a token function');
        if (!this.isOpen())
            throw new ChattyError('disconnected', 'not connected');
        const token = await this.token();
        // Not resent after a reconnect: the new socket is opened with a fresh token anyway.
        const r = await this.request({ type: 'refresh', token }, 'reject');
        if (r?.type !== 'refreshed')
            throw new ChattyError('internal', 'unexpected reply to refresh');
        this.useToken(token);
        this.emit('refreshed', { exp: r.exp });
        return r.exp;
    }
    onOpen(ws) {
        if (ws !== this.ws)
            return;
        this.lastFrameAt = Date.now();
        this.wsOpened = true;
        this.setState('open');
        // A ping first: it is the server's "first frame" and its pong proves the socket works.
        this.raw({ type: 'ping', ref: 'hb' });
        this.heartbeat = setInterval(() => this.beat(), this.opts.heartbeatMs);
        // The backoff starts over only once a socket has stayed up a while: a server that answers
        // and then closes at once (overloaded, restarting) must not be hammered.
        if (this.stableTimer !== null)
            clearTimeout(this.stableTimer);
        this.stableTimer = setTimeout(() => {
            this.stableTimer = null;
            if (ws === this.ws)
                this.attempt = 0;
        }, STABLE_MS);
        // Rejoin every room with `since` (the recovery); sends resume once each room is joined.
        for (const room of this.roomState.keys())
            this.sendJoin(room);
        // Replies lost with the old socket (history, …) are asked again: each is idempotent.
        // Those that need a room go once it is joined.
        for (const r of this.requests.values())
            this.transmitRequest(r);
    }
    beat() {
        // Browsers answer the server's pings themselves, but cannot tell us that a half-open TCP
        // connection died: our own ping must get an answer within two intervals.
        if (Date.now() - this.lastFrameAt > 2 * this.opts.heartbeatMs) {
            this.drop(null);
            return;
        }
        this.raw({ type: 'ping', ref: 'hb' });
    }
    /** Forget the current socket now (without waiting for a close handshake). */
    drop(code) {
        const ws = this.ws;
        if (!ws)
            return;
        this.ws = null;
        ws.onopen = ws.onmessage = ws.onclose = null;
        ws.onerror = noop;
        try {
            ws.close(code ?? CloseCode.NORMAL);
        }
        catch {
            // already closing
        }
        this.onClose(ws, code ?? CloseCode.ABNORMAL, '', true);
    }
    onClose(ws, code, reason, dropped = false) {
        if (ws !== this.ws && !dropped)
            return;
        const opened = this.wsOpened;
        this.ws = null;
        this.wsOpened = false;
        if (this.heartbeat !== null)
            clearInterval(this.heartbeat);
        this.heartbeat = null;
        for (const r of this.roomState.values())
            r.joined = false;
        for (const p of this.pending.values())
            p.inflight = false;
        for (const [ref, r] of this.requests) {
            r.sentOn = null;
            if (r.onLost === 'resend')
                continue;
            this.requests.delete(ref);
            if (r.onLost === 'resolve')
                r.resolve(null); // e.g. a leave: the server forgot the socket anyway
            else
                r.reject(new ChattyError('disconnected', 'the connection closed before the reply', ref));
        }
        this.emit('disconnect', { code, reason, opened });
        if (this.state === 'closed')
            return;
        if (FATAL_CLOSE.has(code))
            return this.setState('closed', { reason: 'server', code });
        if (code === CloseCode.DISCONNECTED)
            return this.setState('closed', { reason: 'disconnected', code });
        if (code === CloseCode.POLICY && typeof this.token !== 'function') {
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
        if (this.timer !== null)
            clearTimeout(this.timer);
        this.timer = setTimeout(() => {
            this.timer = null;
            void this.open();
        }, delay);
    }
    raw(frame) {
        const ws = this.ws;
        if (ws?.readyState !== OPEN)
            return false;
        if (this.encoding === 'msgpack') {
            if (!this.codec)
                return false;
            ws.send(this.codec.encode(defined(frame)));
        }
        else {
            ws.send(JSON.stringify(frame));
        }
        return true;
    }
    ref() {
        return `r${this.nextRef++}`;
    }
    // ---- rooms ----------------------------------------------------------------------------------
    /**
     * Join a room. Resolves with the first `joined`; the client rejoins by itself after every
     * reconnect (a `joined` event with rejoin: true). `{presence: 'count'}`: no presence diffs
     * for this room, only `presenceCount` events (at most one a second), for big rooms.
     * Rejects with a ChattyError (`forbidden`, `room_limit`, …).
     */
    join(room, { presence = 'full' } = {}) {
        let r = this.roomState.get(room);
        if (!r) {
            r = {
                mode: presence,
                count: 0,
                truncated: false,
                since: null,
                joined: false,
                joinRef: null,
                presence: new Map(),
                gap: null,
                rev: null,
                revs: new Map(),
                low: null,
                loading: 0,
                fresh: new Map(),
                reload: null,
                info: null,
                typingAt: 0,
                waiters: [],
            };
            this.roomState.set(room, r);
            this.sendJoin(room);
        }
        if (r.info)
            return Promise.resolve(r.info);
        const state = r;
        return new Promise((resolve, reject) => state.waiters.push({ resolve, reject }));
    }
    sendJoin(room) {
        const r = this.roomState.get(room);
        if (!r)
            return;
        r.joinRef = this.ref();
        const frame = { type: 'join', ref: r.joinRef, room };
        if (r.since !== null)
            frame.since = r.since;
        if (r.since !== null && r.rev !== null)
            frame.since_rev = r.rev;
        if (r.mode === 'count')
            frame.presence = 'count';
        this.raw(frame);
    }
    /** Leave a room: its live messages stop and its unacked sends fail with code 'left'. */
    async leave(room) {
        const r = this.roomState.get(room);
        if (!r)
            return;
        this.forget(room, r, 'left', 'left the room');
        // A join already on its way on this socket will be answered: leave after it, or the
        // server keeps the socket in the room.
        if (!r.joined) {
            if (r.joinRef === null || !this.wsOpened)
                return;
            // Best effort: if the join had not been handled yet, the server answers `not_joined`.
            await this.request({ type: 'leave', room }, 'resolve').catch(noop);
            return;
        }
        await this.request({ type: 'leave', room }, 'resolve');
    }
    /** Drop a room's state; its waiters, sends and requests fail with `code`. */
    forget(room, r, code, message) {
        this.roomState.delete(room);
        for (const w of r.waiters.splice(0))
            w.reject(new ChattyError(code, message));
        for (const p of [...this.pending.values()]) {
            if (p.room === room)
                this.failSend(p, code, message);
        }
        for (const [ref, q] of [...this.requests]) {
            if (q.room !== room)
                continue;
            if (q.sentOn !== null && q.sentOn === this.ws) {
                // Already on its way (e.g. a `read` just before a `leave`): the server answers it, but
                // it is not asked again on another socket, where the room is not joined.
                q.room = null;
                q.onLost = 'reject';
                continue;
            }
            this.requests.delete(ref);
            q.reject(new ChattyError(code, message, ref));
        }
    }
    /** The rooms joined (or being joined). */
    get joinedRooms() {
        return [...this.roomState.keys()];
    }
    /** What the client knows of who is in a joined room; null for a room not joined. */
    presence(room) {
        const r = this.roomState.get(room);
        if (!r)
            return null;
        return { users: presenceList(r.presence), count: r.count, truncated: r.truncated };
    }
    // ---- requests ---------------------------------------------------------------------------------
    /**
     * A request answered by a frame with the same ref. `onLost`: what to do when the socket
     * closes before the reply ('resend': ask again on the next socket). `room`: the frame needs
     * that room joined, so it waits (and is resent) until it is.
     */
    request(frame, onLost = 'resend', room = null) {
        if (room !== null && !this.roomState.has(room)) {
            return Promise.reject(new ChattyError('not_joined', `join ${room} first`));
        }
        if (onLost !== 'resend' && !this.isOpen()) {
            if (onLost === 'resolve')
                return Promise.resolve(null);
            return Promise.reject(new ChattyError('disconnected', 'not connected'));
        }
        if (this.requests.size >= this.opts.maxPendingRequests) {
            return Promise.reject(new ChattyError('queue_full', `${this.requests.size} requests are waiting for a reply`));
        }
        const ref = this.ref();
        const full = { ...frame, ref };
        return new Promise((resolve, reject) => {
            const r = { frame: full, resolve, reject, onLost, room, sentOn: null };
            this.requests.set(ref, r);
            this.transmitRequest(r);
        });
    }
    transmitRequest(r) {
        if (!this.ws || r.sentOn === this.ws)
            return;
        if (r.room !== null && !this.roomState.get(r.room)?.joined)
            return; // sent on its `joined`
        if (this.raw(r.frame))
            r.sentOn = this.ws;
    }
    isOpen() {
        return this.ws !== null && this.ws.readyState === OPEN;
    }
    /** A round trip to the server: resolves with its time in ms. */
    async ping() {
        const t0 = Date.now();
        await this.request({ type: 'ping' }, 'reject');
        return Date.now() - t0;
    }
    /**
     * Older messages: resolves {messages (oldest first), more}. Each carries its current state
     * (`rev`, `edited_ts`, `deleted`, `reactions`, `mine`: this user's reaction keys).
     */
    async history(room, { before, limit = 50 } = {}) {
        const h = await this.page(room, before, limit);
        const r = this.roomState.get(room);
        if (r)
            for (const m of h.messages)
                this.noteDelivered(r, m);
        return h;
    }
    /** One history page, patched with the updates that overtook it. */
    async page(room, before, limit) {
        const frame = { type: 'history', room, limit };
        if (before != null)
            frame.before = before;
        // The server may read the page before a change that it then sends us before the page:
        // such updates are kept while pages are on their way, and win over an older entry.
        const r = this.roomState.get(room);
        if (r)
            r.loading += 1;
        let h;
        try {
            h = await this.request(frame);
        }
        finally {
            if (r)
                r.loading -= 1;
        }
        if (h?.type !== 'history')
            throw new ChattyError('internal', 'unexpected reply to history');
        const messages = h.messages.map((m) => {
            const u = r?.fresh.get(m.seq);
            return u && u.rev > (m.rev ?? 0) ? { ...withoutState(m), ...stateOf(u), room } : { ...m, room };
        });
        if (r?.loading === 0)
            r.fresh.clear();
        return { messages, more: h.more };
    }
    noteDelivered(r, m) {
        if ((m.rev ?? 0) > (r.revs.get(m.seq) ?? 0))
            setRev(r, m.seq, m.rev ?? 0);
        if (r.low === null || m.seq < r.low)
            r.low = m.seq;
    }
    /**
     * One page of who is present in a joined room, in user id order: resolves {users, next};
     * pass `next` as `after` for the following page (null on the last).
     */
    async presencePage(room, { after, limit } = {}) {
        const frame = { type: 'presence', room };
        if (after != null)
            frame.after = after;
        if (limit != null)
            frame.limit = limit;
        const p = await this.request(frame, 'resend', room);
        if (p?.type !== 'presence_page')
            throw new ChattyError('internal', 'unexpected reply to presence');
        return { users: p.users, next: p.next ?? null };
    }
    /** Move the read marker (it never moves backwards). Resolves with the marker as stored. */
    async read(room, seq) {
        const r = await this.request({ type: 'read', room, seq }, 'resend', room);
        if (r?.type !== 'read')
            throw new ChattyError('internal', 'unexpected reply to read');
        return r.seq;
    }
    /**
     * The conversation list (v1.1): the rooms you are a member of or hold a read marker in,
     * most recently active first, as `[{room, seq, read, unread, ts}]` (`unread` = seq - read).
     */
    async rooms() {
        const r = await this.request({ type: 'rooms' });
        if (r?.type !== 'rooms')
            throw new ChattyError('internal', 'unexpected reply to rooms');
        return r.rooms;
    }
    // ---- moderation (v1.1) ---------------------------------------------------------------------
    /** Take `user` out of `room` on every node; `{ban: true}` keeps them out. Needs the role. */
    async kick(room, user, { ban = false } = {}) {
        await this.request({ type: 'kick', room, user, ban }, 'resend', room);
    }
    /** Lift a ban. Needs the role. */
    async unban(room, user) {
        await this.request({ type: 'unban', room, user }, 'resend', room);
    }
    /** Give `user` the room role 'member', 'moderator' or 'owner' (owners and admins). */
    async setRole(room, user, role) {
        await this.request({ type: 'set_role', room, user, role }, 'resend', room);
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
        if (!r?.joined || now - r.typingAt < this.opts.typingIntervalMs)
            return;
        r.typingAt = now;
        this.raw({ type: 'typing', room });
    }
    // ---- the message lifecycle (v1.1) -----------------------------------------------------------
    /**
     * Change the body of one's own message; `meta` replaces the old meta (absent: kept).
     * Resolves {seq, rev} once committed; the new state comes as an `update` event, as for
     * everyone in the room.
     */
    edit(room, seq, body, { meta } = {}) {
        const frame = { type: 'edit', room, seq, body };
        if (meta != null)
            frame.meta = meta;
        return this.change(frame, room);
    }
    /** Delete a message (one's own, or any as a moderator, owner or admin): it stays as a tombstone. */
    delete(room, seq) {
        return this.change({ type: 'delete', room, seq }, room);
    }
    /** Add (`on` true) or remove this user's reaction `key` (an emoji or a short name). */
    react(room, seq, key, on = true) {
        // A boolean whatever JavaScript callers pass.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-conversion
        return this.change({ type: 'react', room, seq, key, on: !!on }, room);
    }
    async change(frame, room) {
        // Each sets a state rather than toggling one (a repeat changes nothing), so it may be
        // asked again after a reconnect like history.
        const u = await this.request(frame, 'resend', room);
        if (u?.type !== 'updated')
            throw new ChattyError('internal', `unexpected reply to ${frame.type}`);
        // Not a rev to apply: the `update` frame of this rev brings the state.
        return { seq: u.seq, rev: u.rev };
    }
    // ---- sending ----------------------------------------------------------------------------------
    /**
     * Send a message. Returns the optimistic copy {room, cid, body, meta?, from, pending: true,
     * acked} at once; `acked` resolves with {seq, ts} once the server has committed it. The
     * server's `message` event for it carries the same cid (replace the optimistic copy with it).
     * `meta`: a small JSON object stored with the message (e.g. {reply_to: seq}). `cid`: your
     * own idempotency key (default: a fresh one). Past `maxPendingSends` unacknowledged sends,
     * `acked` rejects with code `queue_full` and nothing is sent.
     */
    send(room, body, { meta, cid } = {}) {
        const r = this.roomState.get(room);
        if (!r)
            throw new ChattyError('not_joined', `join ${room} first`);
        if (cid !== undefined && !CID_RE.test(cid))
            throw new ChattyError('bad_request', `invalid cid ${cid}`);
        const id = cid ?? newCid();
        const copy = (acked) => ({
            room,
            cid: id,
            body,
            ...(meta && { meta }),
            from: this.user,
            pending: true,
            acked,
        });
        const already = this.pending.get(pendingKey(room, id));
        if (already)
            return copy(already.acked);
        if (this.pending.size >= this.opts.maxPendingSends) {
            const e = new ChattyError('queue_full', `${this.pending.size} sends are waiting for their ack`);
            const acked = Promise.reject(e);
            acked.catch(noop);
            this.emit('failed', { room, cid: id, body, code: e.code, message: e.message });
            return copy(acked);
        }
        // Others stop showing "typing" when our message lands: the next keystroke must tell again.
        r.typingAt = 0;
        let resolve;
        let reject;
        const acked = new Promise((res, rej) => {
            resolve = res;
            reject = rej;
        });
        acked.catch(noop); // failures are also reported as 'failed' events
        const p = { room, cid: id, body, meta: meta ?? null, ref: null, inflight: false, acked, resolve, reject };
        this.pending.set(pendingKey(room, id), p);
        this.transmit(p);
        return copy(acked);
    }
    transmit(p) {
        // Settled since it was scheduled (failed with `left`, `removed`, …): never send it.
        if (this.pending.get(pendingKey(p.room, p.cid)) !== p)
            return;
        if (p.inflight || !this.roomState.get(p.room)?.joined)
            return; // sent on the next `joined`
        p.ref = this.ref();
        const frame = { type: 'send', ref: p.ref, room: p.room, cid: p.cid, body: p.body };
        if (p.meta)
            frame.meta = p.meta;
        p.inflight = this.raw(frame);
    }
    failSend(p, code, message, ref) {
        this.pending.delete(pendingKey(p.room, p.cid));
        p.reject(new ChattyError(code, message, ref));
        this.emit('failed', { room: p.room, cid: p.cid, body: p.body, code, message });
    }
    /** Sends not yet acknowledged, oldest first. */
    pendingSends(room) {
        return [...this.pending.values()]
            .filter((p) => room === undefined || p.room === room)
            .map(({ room, cid, body, meta }) => ({ room, cid, body, ...(meta && { meta }) }));
    }
    // ---- incoming frames ----------------------------------------------------------------------
    onData(ws, data) {
        if (ws !== this.ws)
            return;
        this.lastFrameAt = Date.now();
        if (isBlob(data)) {
            // Only when binaryType could not be set: decode in arrival order.
            this.inbound = this.inbound
                .then(() => data.arrayBuffer())
                .then((buf) => {
                if (ws === this.ws)
                    this.onFrame(this.decode(buf));
            })
                .catch(noop);
            return;
        }
        this.onFrame(this.decode(data));
    }
    decode(data) {
        let f;
        try {
            if (this.encoding === 'json') {
                if (typeof data !== 'string')
                    return null; // the server sends JSON as text only
                f = JSON.parse(data);
            }
            else {
                if (typeof data === 'string' || !this.codec)
                    return null; // MessagePack is binary only
                const bytes = ArrayBuffer.isView(data)
                    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
                    : data instanceof ArrayBuffer || Object.prototype.toString.call(data) === '[object ArrayBuffer]'
                        ? new Uint8Array(data)
                        : null;
                if (!bytes)
                    return null;
                f = this.codec.decode(bytes);
            }
        }
        catch {
            return null;
        }
        if (typeof f !== 'object' || f === null || typeof f.type !== 'string')
            return null;
        return f;
    }
    onFrame(f) {
        if (!f)
            return;
        this.emit('frame', f);
        switch (f.type) {
            case 'joined':
                return this.onJoined(f);
            case 'message': {
                const r = this.roomState.get(f.room);
                if (r?.since == null || f.seq <= r.since)
                    return; // not ours, or a duplicate
                if (r.gap) {
                    void this.fillGap(f.room, r, r.gap.after, f.seq);
                    r.gap = null;
                }
                r.since = f.seq;
                // Its rev does not move the watermark: updates of older messages, replayed after
                // these messages, may still be on their way.
                this.noteDelivered(r, f);
                const { type: _type, ...m } = f;
                return this.deliver(m, false);
            }
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
                if (f.user !== this.user && this.roomState.has(f.room))
                    this.emit('typing', { room: f.room, user: f.user });
                return;
            case 'read':
                if (this.roomState.has(f.room))
                    this.emit('read', { room: f.room, seq: f.seq });
                return this.reply(f.ref, f);
            case 'pong':
                return this.reply(f.ref, f);
            case 'error':
                return this.onError(f);
            case 'removed':
                return this.onRemoved(f.room, f.reason);
            case 'event':
                // The personal channel (v1.1): the backend's event for this user, on every tab.
                return this.emit('event', { data: f.data });
            case 'inbox':
                // v1.1: a message in a private room of ours that this socket has not joined (no body:
                // join the room to read it). A joined room's messages come as `message` instead.
                if (typeof f.room !== 'string' || !Number.isSafeInteger(f.seq) || this.roomState.has(f.room))
                    return;
                return this.emit('inbox', { room: f.room, seq: f.seq, from: f.from, name: f.name, ts: f.ts });
            default: // history, left, updated, rooms, presence_page, kicked, …: replies
                return this.reply(f.ref, f);
        }
    }
    reply(ref, f) {
        const r = ref !== undefined ? this.requests.get(ref) : undefined;
        if (!r || ref === undefined)
            return;
        this.requests.delete(ref);
        r.resolve(f);
    }
    onJoined(f) {
        const r = this.roomState.get(f.room);
        if (!r || f.ref !== r.joinRef)
            return; // left meanwhile, or an answer to an older join
        const rejoin = r.since !== null;
        // A head below what we saw means the server lost or reset the room (a dev database
        // wiped): start over from its head rather than drop every new message as a duplicate.
        // A revision below what we saw says the same.
        const reset = rejoin && ((r.since !== null && f.seq < r.since) || (f.rev != null && r.rev !== null && f.rev < r.rev));
        const upTo = r.since;
        let reload = null;
        if (!rejoin || reset) {
            r.since = f.seq;
            // What the application loads from here on shows every change up to f.rev at least.
            r.rev = f.rev ?? null;
            r.revs.clear();
            r.fresh.clear();
            r.low = null;
            r.reload = null;
        }
        else {
            // More changes were missed than the server replays: what was delivered is reloaded with
            // history. Until that is done the watermark stays put, so that a reconnect meanwhile
            // asks again from there. Without the flag the replay covers everything, even what an
            // interrupted reload had yet to do.
            r.reload = reload = f.rev_truncated ? { upTo, rev: f.rev ?? 0 } : null;
        }
        // More was missed than the server replays: the replay starts later than `since`, and the
        // hole is paged in with history once the first replayed seq tells where it ends.
        r.gap = f.replay_truncated && !reset && r.since !== null ? { after: r.since } : null;
        r.joined = true;
        r.presence = new Map(f.presence.map((p) => [p.user, p.name]));
        r.count = f.presence_count ?? f.presence.length;
        r.truncated = !!f.presence_truncated;
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
        for (const w of r.waiters.splice(0))
            w.resolve(info);
        this.emit('joined', info);
        this.emit('presence', { room: f.room, users: info.presence, joins: [], leaves: [], count: r.count, truncated: r.truncated });
        for (const p of this.pending.values())
            if (p.room === f.room)
                this.transmit(p);
        for (const q of this.requests.values())
            if (q.room === f.room)
                this.transmitRequest(q);
        if (reload)
            void this.reloadChanged(f.room, r, reload);
    }
    onUpdate(f) {
        const r = this.roomState.get(f.room);
        if (r?.since == null || !Number.isSafeInteger(f.rev))
            return;
        // Updates come in rev order, each with the whole current state: once rev N has arrived,
        // every change up to N is known or superseded by one still to come.
        if (r.reload)
            r.reload.rev = Math.max(r.reload.rev, f.rev);
        else
            r.rev = Math.max(r.rev ?? 0, f.rev);
        if (r.loading > 0 && f.rev > (r.fresh.get(f.seq)?.rev ?? 0)) {
            r.fresh.set(f.seq, f);
            if (r.fresh.size > REVS_MAX)
                dropFirst(r.fresh);
        }
        if (f.rev <= (r.revs.get(f.seq) ?? 0))
            return; // this state, or a newer one, was delivered
        setRev(r, f.seq, f.rev);
        const { type: _type, ...u } = f;
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
            let before = (reload.upTo ?? 0) + 1;
            for (;;) {
                const low = r.low;
                if (!current() || low === null || before <= low)
                    break;
                const h = await this.page(room, before, 200);
                if (!current())
                    return;
                for (const m of h.messages) {
                    if (m.seq < low || (m.rev ?? 0) <= (r.revs.get(m.seq) ?? 0))
                        continue;
                    setRev(r, m.seq, m.rev ?? 0);
                    this.emit('update', { room, seq: m.seq, change: 'reload', ...stateOf(m), rev: m.rev ?? 0, mine: m.mine ?? [] });
                }
                const first = h.messages[0];
                if (!h.more || !first)
                    break;
                before = first.seq;
            }
            if (!current())
                return;
            r.rev = Math.max(r.rev ?? 0, reload.rev);
            r.reload = null;
        }
        catch (e) {
            // The watermark stays behind: the next rejoin asks again from there.
            this.emit('error', { room, code: errorCode(e), message: `history: ${errorMessage(e)}` });
        }
    }
    deliver(m, recovered) {
        const own = m.from === this.user;
        const key = pendingKey(m.room, m.cid);
        const p = own ? this.pending.get(key) : undefined;
        if (p) {
            this.pending.delete(key);
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
                for (const m of missing)
                    this.deliver(m, true);
                const first = h.messages[0];
                if (!h.more || missing.length < h.messages.length || !first)
                    break;
                before = first.seq;
            }
        }
        catch (e) {
            this.emit('error', { room, code: errorCode(e), message: `history: ${errorMessage(e)}` });
        }
    }
    onAck(f) {
        const key = pendingKey(f.room, f.cid);
        const p = this.pending.get(key);
        if (!p)
            return;
        this.pending.delete(key);
        p.resolve({ seq: f.seq, ts: f.ts });
        this.emit('ack', { room: f.room, cid: f.cid, seq: f.seq, ts: f.ts });
    }
    /** This socket was taken out of the room (kicked, banned, or no longer a member): the room
     * is forgotten (no rejoin after a reconnect) and its unacked sends fail. */
    onRemoved(room, reason) {
        const r = this.roomState.get(room);
        if (!r)
            return;
        this.forget(room, r, 'removed', `removed from the room (${reason})`);
        this.emit('removed', { room, reason });
    }
    onPresence(f) {
        const r = this.roomState.get(f.room);
        if (!r)
            return;
        // Diffs are set operations: they may repeat what `joined` already said.
        for (const l of f.leaves)
            r.presence.delete(l.user);
        if (r.truncated) {
            // The map holds only part of the room, so the count follows the diffs (a rename, which
            // shows as a join of a present user, is the one thing it cannot tell apart).
            const arrived = f.joins.filter((j) => !r.presence.has(j.user)).length;
            r.count = Math.max(0, r.count + arrived - f.leaves.length);
        }
        else {
            for (const j of f.joins)
                r.presence.set(j.user, j.name);
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
        const err = new ChattyError(f.code, f.message, f.ref);
        if (f.ref !== undefined) {
            // A join?
            for (const [room, r] of this.roomState) {
                if (r.joinRef !== f.ref)
                    continue;
                if (f.code === 'unavailable' || f.code === 'rate_limited') {
                    // The store is busy, or this socket sent too much at once (a rejoin of many rooms):
                    // ask again shortly, on this socket if it is still up.
                    const ws = this.ws;
                    this.later(() => ws === this.ws && this.roomState.get(room) === r && this.sendJoin(room));
                }
                else {
                    for (const w of r.waiters.splice(0))
                        w.reject(err);
                    this.forget(room, r, f.code, f.message);
                    this.emit('error', { room, code: f.code, message: f.message, ref: f.ref });
                }
                return;
            }
            // A send?
            for (const p of this.pending.values()) {
                if (p.ref !== f.ref)
                    continue;
                p.inflight = false;
                if (!RETRY_SEND.has(f.code))
                    return this.failSend(p, f.code, f.message, f.ref);
                // Same cid later: the server stores it at most once.
                const ws = this.ws;
                this.later(() => ws === this.ws && this.transmit(p));
                return;
            }
            const r = this.requests.get(f.ref);
            if (r) {
                this.requests.delete(f.ref);
                return r.reject(err);
            }
        }
        this.emit('error', { code: f.code, message: f.message, ...(f.ref !== undefined && { ref: f.ref }) });
    }
}
/** Shorthand: `connect({url, token})` creates a client and opens it. */
export function connect(options) {
    return new ChattyClient(options).connect();
}
// ---- helpers ---------------------------------------------------------------------------------
function noop() {
    // nothing to do
}
/** Delete the oldest entry of a map (maps keep insertion order). */
function dropFirst(map) {
    for (const k of map.keys()) {
        map.delete(k);
        return;
    }
}
function pendingKey(room, cid) {
    return `${room}\n${cid}`;
}
/** Remember the rev delivered for `seq`, within REVS_MAX entries per room. */
function setRev(r, seq, rev) {
    r.revs.delete(seq); // re-inserted last: the map is ordered by last change
    r.revs.set(seq, rev);
    if (r.revs.size <= REVS_MAX)
        return;
    // An entry at or below the watermark filters nothing any more: every later update is above
    // it. Those go first, then the least recently changed.
    const mark = r.rev ?? 0;
    for (const [s, v] of r.revs)
        if (v <= mark)
            r.revs.delete(s);
    while (r.revs.size > REVS_MAX)
        dropFirst(r.revs);
}
// The fields of a message that an `update` replaces as a whole.
const STATE = ['rev', 'body', 'meta', 'edited_ts', 'deleted', 'reactions'];
function stateOf(m) {
    const s = { reactions: [] };
    for (const k of STATE)
        if (m[k] !== undefined)
            s[k] = m[k];
    return s;
}
const STATE_KEYS = new Set(STATE);
function withoutState(m) {
    return Object.fromEntries(Object.entries(m).filter(([k]) => !STATE_KEYS.has(k)));
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
/** The frame without its undefined fields (MessagePack would send them as nil). */
function defined(frame) {
    const out = {};
    for (const [k, v] of Object.entries(frame))
        if (v !== undefined)
            out[k] = v;
    return out;
}
function isBlob(data) {
    const B = globalThis.Blob;
    return B !== undefined && data instanceof B;
}
function errorMessage(e) {
    return e instanceof Error ? e.message : String(e);
}
function errorCode(e) {
    return e instanceof ChattyError ? e.code : 'internal';
}
/** Import `@msgpack/msgpack` (an optional peer dependency) when MessagePack is asked for. */
async function loadMsgpack() {
    // A variable specifier: bundlers and TypeScript leave the optional import alone.
    const specifier = '@msgpack/msgpack';
    const mod = (await import(/* webpackIgnore: true */ /* @vite-ignore */ specifier));
    const codec = typeof mod.encode === 'function' ? mod : mod.default;
    if (!codec || typeof codec.encode !== 'function' || typeof codec.decode !== 'function') {
        throw new Error('the module has no encode/decode');
    }
    return codec;
}
/** The claims of a JWT, unverified (only to know our own user id, roles and expiry). */
export function tokenClaims(token) {
    try {
        const part = (token.split('.')[1] ?? '').replace(/-/g, '+').replace(/_/g, '/');
        const bin = atob(part + '='.repeat((4 - (part.length % 4)) % 4));
        const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
        return typeof claims === 'object' && claims !== null ? claims : {};
    }
    catch {
        return {};
    }
}
