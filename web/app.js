// The chat page. All protocol work (reconnect, recovery, idempotent resends, dedupe) is in
// chatty.js; this file only turns its events into DOM. Messages are keyed by seq, so whatever
// order or repetition events come in, each message is on screen once, in seq order.
// Each message's <li> holds its current state (li.msg); an `update` replaces it whole when its
// rev is newer, so edits, deletes and reactions land once whatever the order.

import { ChattyClient } from './chatty.js';

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 50;
const TYPING_SHOWN_MS = 3500;
const MAX_BODY_BYTES = 4096;

let client = null;
let me = null; // our user id
const views = new Map(); // room -> view (see newView)
let active = null; // the room on screen
let compose = null; // {room, seq, mode: 'reply' | 'edit'} while the composer replies or edits
// The server's conversation list ({room, seq, read, unread, ts}), newest first, kept live by
// `inbox` frames; `live` on a row: the conversationsAsked count when a frame last moved it.
let conversations = [];
const readHere = new Map(); // room -> the read marker this page held when it stopped showing the room
let conversationsAsked = 0; // the latest rooms() call: older answers are dropped

// ---- sign in ------------------------------------------------------------------------------

$('signin-name').value = localStorage.getItem('chatty.name') ?? '';

// A token from the development endpoint. `?ttl=SECONDS` in the page's address asks for short
// tokens, to watch the client refresh them before they expire.
async function devToken(name, admin) {
  const ttl = Number(new URLSearchParams(location.search).get('ttl')) || undefined;
  const res = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name, admin, ttl_s: ttl }),
  });
  if (!res.ok) throw new Error((await res.text()) || `HTTP ${res.status}`);
  return res.json();
}

$('signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('signin-name').value.trim();
  const admin = $('signin-admin').checked;
  $('signin-error').textContent = '';
  if (!name) return;
  try {
    const { user } = await devToken(name, admin);
    localStorage.setItem('chatty.name', name);
    // A token function: the client asks for a fresh token before each connection and before
    // the current one expires (it then sends `refresh` on the open socket).
    start(async () => (await devToken(name, admin)).token, user);
  } catch (err) {
    $('signin-error').textContent = `Could not sign in: ${err.message}`;
  }
});

function start(token, user) {
  me = user;
  $('me-name').textContent = user;
  paintAvatar($('me-avatar'), user);
  $('signin').hidden = true;
  $('app').hidden = false;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  client = new ChattyClient({ url, token });
  client.on('refreshed', ({ exp }) => ($('status').dataset.exp = exp));
  client.onInbox(onInbox);
  client.on('removed', ({ room, reason }) => {
    const why = { kicked: 'kicked from', banned: 'banned from', removed: 'removed from' }[reason] ?? 'removed from';
    toast(`You were ${why} #${room}.`);
    dropView(room);
  });
  client.on('state', onState);
  // The conversation list, each time the socket opens (sign-in, and after a reconnect).
  client.on('state', ({ state }) => state === 'open' && refreshConversations());
  // The last close code, for the curious (and the browser test).
  client.on('disconnect', ({ code, opened }) => opened && ($('status').dataset.closeCode = code));
  client.on('joined', onJoined);
  client.on('message', (m) => addMessage(m));
  client.on('update', onUpdate);
  client.on('ack', onAck);
  client.on('failed', onFailed);
  client.on('presence', ({ room, users, count, truncated }) => {
    const v = views.get(room);
    if (!v) return;
    v.presence = users;
    // A big room lists only part of who is present (the server says how many).
    v.count = count ?? users.length;
    v.truncated = !!truncated;
    if (room === active) renderPresence();
    renderRoomMeta();
  });
  client.on('typing', onTyping);
  client.on('read', ({ room, seq }) => {
    const v = views.get(room);
    if (v && seq > v.read) {
      v.read = seq;
      renderUnread(v);
    }
  });
  client.on('error', ({ room, code, message }) => toast(`${room ? `#${room}: ` : ''}${message} (${code})`));
  client.connect();
  $('join-room').focus();
}

$('signout').addEventListener('click', () => {
  endCompose();
  client?.close();
  client = null;
  for (const v of views.values()) v.el.remove();
  views.clear();
  $('room-list').replaceChildren();
  conversations = [];
  readHere.clear();
  conversationsAsked++;
  renderConversations();
  active = null;
  showRoom(null);
  $('app').hidden = true;
  $('signin').hidden = false;
});

// ---- connection status ----------------------------------------------------------------------

function onState({ state, delay, reason }) {
  const s = $('status');
  s.dataset.state = state;
  $('app').dataset.conn = state;
  s.textContent = { connecting: 'Connecting…', open: 'Connected', reconnecting: 'Reconnecting…', closed: 'Offline' }[state] ?? state;
  if (state === 'closed' && reason === 'disconnected') s.textContent = 'Disconnected by the server';
  s.title = state === 'reconnecting' && delay ? `Next attempt in ${(delay / 1000).toFixed(1)} s` : '';
}

// The browser knows before our backoff timer does.
addEventListener('online', () => client?.reconnectNow());

// ---- rooms ----------------------------------------------------------------------------------

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = $('join-room').value.trim().replace(/^#/, '');
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(room)) return;
  $('join-room').value = '';
  joinRoom(room);
});

function joinRoom(room) {
  if (!views.has(room)) {
    views.set(room, newView(room));
    renderConversations(); // a joined room leaves the conversation list
    client.join(room).catch((err) => {
      toast(`Could not join #${room}: ${err.message}`);
      dropView(room);
    });
  }
  showRoom(room);
}

// ---- conversations: rooms of ours not joined on this page -----------------------------------

async function refreshConversations() {
  if (!client) return;
  const asked = ++conversationsAsked;
  const c = client;
  try {
    const list = await c.rooms();
    if (asked !== conversationsAsked || c !== client) return; // a newer answer is coming, or signed out
    conversations = mergeConversations(list, asked);
    renderConversations();
  } catch {
    // Not fatal: the list stays as it was until the next refresh.
  }
}

/**
 * The server's answer to request `asked`, with what `inbox` frames told since it was asked (the
 * answer may have been read before those messages were committed): heads and read markers only
 * move forward, and a room the answer lacks stays if a frame brought it meanwhile.
 */
function mergeConversations(list, asked) {
  const rows = new Map(list.map((c) => [c.room, { ...c }]));
  for (const c of conversations) {
    if (!(c.live >= asked)) continue; // the server knew all of it when it answered
    const s = rows.get(c.room);
    if (!s) {
      rows.set(c.room, c);
      continue;
    }
    if (c.seq > s.seq) Object.assign(s, { seq: c.seq, ts: c.ts });
    s.read = Math.max(s.read, c.read);
    s.unread = Math.max(0, s.seq - s.read);
    s.live = c.live;
  }
  // Newest activity first, rooms without messages last (a stable sort keeps the server's order otherwise).
  const at = (c) => c.ts ?? -Infinity;
  return [...rows.values()].sort((a, b) => at(b) - at(a) || 0);
}

/** A message in one of our private rooms not joined here: its row's badge counts it, on top. */
function onInbox({ room, seq, from, ts }) {
  let c = conversations.find((x) => x.room === room);
  const known = !!c;
  if (known && seq <= c.seq) return; // nothing new
  c ??= { room, seq: 0, read: 0, unread: 0 };
  c.seq = seq;
  c.ts = ts;
  // A room left on this page: its row (if any) predates our reading there.
  c.read = Math.max(c.read, readHere.get(room) ?? 0);
  // Our own message (from another tab or device) is not unread: that one read the room up to it.
  if (from === me) c.read = Math.max(c.read, seq);
  c.unread = Math.max(0, c.seq - c.read);
  c.live = conversationsAsked;
  conversations = [c, ...conversations.filter((x) => x !== c)];
  renderConversations();
  // New to the list (we were just made a member, say): the server knows our read marker there.
  if (!known) refreshConversations();
}

function renderConversations() {
  let total = 0;
  const rows = conversations
    .filter((c) => !views.has(c.room))
    .map(({ room, unread }) => {
      const item = document.createElement('li');
      item.dataset.testid = 'conversation-item';
      item.dataset.room = room;
      const link = document.createElement('button');
      link.className = 'room-link';
      link.dataset.testid = 'conversation-open';
      link.title = `Join #${room}`;
      const hash = document.createElement('span');
      hash.className = 'hash';
      hash.textContent = '#';
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = room;
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.dataset.testid = 'conversation-unread';
      const n = Math.max(0, Number(unread) || 0);
      total += n;
      badge.textContent = n > 99 ? '99+' : String(n);
      badge.hidden = n === 0;
      item.classList.toggle('unread', n > 0);
      link.append(hash, name, badge);
      link.addEventListener('click', () => joinRoom(room));
      item.append(link);
      return item;
    });
  $('conversation-list').replaceChildren(...rows);
  $('conversations').hidden = rows.length === 0;
  const sum = $('conversations-unread');
  sum.textContent = total > 99 ? '99+' : String(total);
  sum.hidden = total === 0;
  sum.title = `${total} unread in rooms not joined here`;
}

function newView(room) {
  // One scroll area per room, so switching rooms keeps each one's scroll position.
  const el = document.createElement('div');
  el.className = 'messages';
  el.dataset.testid = 'messages';
  el.dataset.room = room;
  el.hidden = true;
  const older = document.createElement('button');
  older.className = 'older';
  older.dataset.testid = 'load-older';
  older.textContent = 'Load older messages';
  older.hidden = true;
  const list = document.createElement('ol');
  list.dataset.testid = 'message-list';
  list.dataset.room = room;
  el.append(older, list);
  $('views').append(el);

  const item = document.createElement('li');
  item.dataset.testid = 'room-item';
  item.dataset.room = room;
  item.innerHTML = `<button class="room-link"><span class="hash">#</span><span class="name"></span>
    <span class="badge" data-testid="room-unread" hidden></span></button>
    <button class="leave" data-testid="room-leave" title="Leave #${room}" aria-label="Leave">×</button>`;
  item.querySelector('.name').textContent = room;
  item.querySelector('.room-link').addEventListener('click', () => showRoom(room));
  item.querySelector('.leave').addEventListener('click', () => {
    // A read still waiting for its timer goes first: after the leave it would be refused.
    if (v.readTimer) client.read(room, v.read).catch(() => {});
    client.leave(room).catch(() => {});
    dropView(room);
  });
  $('room-list').append(item);

  const v = {
    room,
    el,
    list,
    older,
    item,
    bySeq: new Map(), // seq -> <li>: the dedupe
    lastSeq: 0,
    read: 0,
    oldest: null, // lowest seq loaded: where "load older" continues
    more: false,
    loading: false,
    presence: [],
    typing: new Map(), // user -> timer
    joined: false,
  };
  older.addEventListener('click', () => loadOlder(v));
  // One listener for the buttons of every message (actions, reaction chips, reply quotes).
  list.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-act]');
    const li = b?.closest('li[data-seq]'); // not a pending copy: it has no seq to act on yet
    if (li?.msg) act(v, li, b);
  });
  el.addEventListener('scroll', () => {
    if (el.scrollTop < 40 && v.more && !v.loading) loadOlder(v);
  });
  return v;
}

function dropView(room) {
  const v = views.get(room);
  if (!v) return;
  v.el.remove();
  v.item.remove();
  clearTimeout(v.readTimer);
  v.readTimer = null;
  readHere.set(room, v.read);
  views.delete(room);
  if (active === room) showRoom(views.keys().next().value ?? null);
  // A room left here may still be one of our conversations (a read marker, a membership).
  refreshConversations();
}

function showRoom(room) {
  if (compose && compose.room !== room) endCompose();
  active = room;
  for (const v of views.values()) {
    v.el.hidden = v.room !== room;
    v.item.classList.toggle('active', v.room === room);
  }
  $('empty').hidden = !!room;
  $('composer').hidden = !room;
  $('room-title').textContent = room ? `#${room}` : '';
  $('composer-input').placeholder = room ? `Message #${room}` : '';
  renderPresence();
  renderTyping();
  renderRoomMeta();
  const v = views.get(room);
  if (v) {
    scrollToBottom(v);
    markRead(v);
    $('composer-input').focus();
  }
}

async function onJoined({ room, seq, read, presence, presenceCount, presenceTruncated, rejoin, reset, role }) {
  const v = views.get(room);
  if (!v) return;
  v.joined = true;
  v.role = role;
  v.read = Math.max(v.read, read);
  v.presence = presence;
  v.count = presenceCount ?? presence.length;
  v.truncated = !!presenceTruncated;
  // Deleting others' messages is for moderators, owners and admins (CSS shows the button).
  v.el.toggleAttribute('data-moderate', client.canModerate(room));
  if (reset) {
    // The server's room is not the one we saw (a wiped dev database): start over.
    if (compose?.room === room) endCompose();
    v.list.replaceChildren();
    v.bySeq.clear();
    v.lastSeq = 0;
  }
  v.lastSeq = Math.max(v.lastSeq, seq);
  if (!rejoin || reset) {
    // The first screenful. Later messages arrive live; older ones on demand.
    v.oldest = seq + 1;
    v.more = seq > 0;
    await loadOlder(v);
    scrollToBottom(v);
  }
  renderUnread(v);
  if (room === active) {
    renderPresence();
    renderRoomMeta();
    markRead(v);
  }
}

async function loadOlder(v) {
  if (v.loading || !v.more) return;
  v.loading = true;
  v.older.disabled = true;
  v.older.textContent = 'Loading…';
  try {
    const { messages, more } = await client.history(v.room, { before: v.oldest, limit: PAGE_SIZE });
    const el = v.el;
    const fromBottom = el.scrollHeight - el.scrollTop;
    for (const m of messages) addMessage(m, { history: true });
    if (messages.length) v.oldest = Math.min(v.oldest, messages[0].seq);
    v.more = more;
    // Keep what the reader was looking at in place while older lines appear above it.
    el.scrollTop = el.scrollHeight - fromBottom;
  } catch (err) {
    toast(`Could not load history: ${err.message}`);
  } finally {
    v.loading = false;
    v.older.disabled = false;
    v.older.textContent = 'Load older messages';
    v.older.hidden = !v.more;
  }
}

// ---- messages -------------------------------------------------------------------------------

function addMessage(m, { history = false } = {}) {
  const v = views.get(m.room);
  if (!v) return; // left
  const known = v.bySeq.get(m.seq);
  if (known) {
    // Already on screen; a history page may still bring a newer state of it.
    if (applyState(v, known, m)) refreshQuotes(v, m.seq);
    return;
  }
  const stick = !history && nearBottom(v);
  // Our own message replaces its optimistic copy (same cid) instead of adding a second line.
  let li = m.from === me ? pendingItem(v, m.cid) : null;
  if (li) {
    li.remove();
    li.msg = stateOf(m);
    renderMsg(v, li);
  }
  li ??= messageItem(v, m);
  settle(li, m.seq, m.ts);
  v.bySeq.set(m.seq, li);
  place(v, li, m.seq);
  if (m.seq > v.lastSeq) v.lastSeq = m.seq;
  if (!history) stopTyping(v, m.from);
  renderUnread(v);
  if (stick || m.from === me) scrollToBottom(v);
  if (v.room === active) markRead(v);
  refreshQuotes(v, m.seq); // replies shown before the message they quote was loaded
}

function onAck({ room, cid, seq, ts }) {
  // The ack can beat our own `message` frame: settle the copy now; the frame is then a duplicate.
  const v = views.get(room);
  const li = v && pendingItem(v, cid);
  if (!li || v.bySeq.has(seq)) return;
  li.remove();
  settle(li, seq, ts);
  v.bySeq.set(seq, li);
  place(v, li, seq);
  if (seq > v.lastSeq) v.lastSeq = seq;
  // Our own message is read: on screen, the marker moves past it (else our other tabs and
  // devices would count it as unread). The `message` frame, now a duplicate, would not do it.
  markRead(v);
}

function onFailed({ room, cid, code, message }) {
  const v = views.get(room);
  const li = v && pendingItem(v, cid);
  if (!li) return;
  li.classList.add('failed');
  li.querySelector('.note').textContent = `not sent: ${message} (${code})`;
}

function pendingItem(v, cid) {
  return v.list.querySelector(`li[data-pending][data-cid="${CSS.escape(cid)}"]`);
}

function messageItem(v, m) {
  const li = $('message-template').content.firstElementChild.cloneNode(true);
  li.dataset.cid = m.cid;
  li.dataset.from = m.from;
  li.classList.toggle('own', m.from === me);
  paintAvatar(li.querySelector('.avatar'), m.name ?? m.from);
  li.querySelector('.author').textContent = m.name ?? m.from;
  li.msg = stateOf(m);
  renderMsg(v, li);
  return li;
}

// ---- edits, deletes, reactions, replies -------------------------------------------------------

/** What a message shows. `mine`: our reaction keys (history says them; then our own calls). */
function stateOf(m) {
  return {
    name: m.name ?? m.from,
    body: m.body ?? '',
    meta: m.meta ?? null,
    rev: m.rev ?? 0,
    edited_ts: m.edited_ts ?? null,
    deleted: !!m.deleted,
    reactions: m.reactions ?? [],
    mine: new Set(m.mine ?? []),
  };
}

/** Take a message's whole state from an update or a history entry, if it is newer. */
function applyState(v, li, s) {
  const st = li.msg;
  if ((s.rev ?? 0) <= st.rev) return false;
  const next = stateOf(s);
  // Updates say how many reacted, not who: our own keys stay unless a reload lists them.
  if (!s.mine) next.mine = st.mine;
  li.msg = { ...next, name: st.name };
  renderMsg(v, li);
  return true;
}

function onUpdate(u) {
  const v = views.get(u.room);
  const li = v?.bySeq.get(u.seq);
  // Not on screen: should it ever be loaded, history brings its current state.
  if (!li || !applyState(v, li, u)) return;
  refreshQuotes(v, u.seq);
  if (u.deleted && compose?.room === u.room && compose.seq === u.seq) endCompose();
}

function renderMsg(v, li) {
  const s = li.msg;
  li.classList.toggle('deleted', s.deleted);
  li.querySelector('.body').textContent = s.deleted ? '' : s.body;
  li.querySelector('.tombstone').hidden = !s.deleted;
  const edited = li.querySelector('.edited');
  edited.hidden = s.deleted || !s.edited_ts;
  edited.title = s.edited_ts ? `Edited ${new Date(s.edited_ts).toLocaleString()}` : '';
  renderQuote(v, li);
  renderReactions(li);
}

/** The seq a message replies to (meta.reply_to), or null. */
function replyTo(s) {
  const to = s.meta?.reply_to;
  return !s.deleted && Number.isSafeInteger(to) && to > 0 ? to : null;
}

function renderQuote(v, li) {
  const to = replyTo(li.msg);
  const q = li.querySelector('.quote');
  q.hidden = to === null;
  if (to === null) {
    delete li.dataset.replyTo;
    return;
  }
  li.dataset.replyTo = to;
  q.textContent = `↪ ${quoteText(v, to)}`;
  q.title = 'Show the message replied to';
}

/** Quotes follow what they quote: it may load later, or be edited or deleted. */
function refreshQuotes(v, seq) {
  for (const li of v.list.querySelectorAll(`li[data-reply-to="${Number(seq)}"]`)) renderQuote(v, li);
}

function quoteText(v, seq) {
  const t = v.bySeq.get(seq)?.msg;
  if (!t) return `message #${seq}`; // older than what is loaded
  if (t.deleted) return `${t.name}: message deleted`;
  const line = t.body.split('\n')[0];
  return `${t.name}: ${line.length > 80 ? `${line.slice(0, 80)}…` : line}`;
}

function renderReactions(li) {
  const s = li.msg;
  const chips = s.deleted
    ? []
    : s.reactions
        .filter((r) => r.count > 0)
        .map(({ key, count }) => {
          const b = document.createElement('button');
          b.type = 'button';
          b.className = 'chip';
          b.dataset.testid = 'reaction';
          b.dataset.act = 'react';
          b.dataset.key = key;
          const mine = s.mine.has(key);
          b.classList.toggle('mine', mine);
          b.setAttribute('aria-pressed', String(mine));
          b.title = mine ? 'Remove your reaction' : `React with ${key}`;
          b.textContent = `${key} ${count}`;
          return b;
        });
  li.querySelector('.reactions').replaceChildren(...chips);
}

function act(v, li, b) {
  const seq = Number(li.dataset.seq);
  const room = v.room;
  switch (b.dataset.act) {
    case 'react': {
      // A chip or a quick reaction toggles ours. The counts come with the room's `update`.
      const key = b.dataset.key;
      const on = !li.msg.mine.has(key);
      client
        .react(room, seq, key, on)
        .then(() => {
          const cur = v.bySeq.get(seq);
          if (!cur) return;
          if (on) cur.msg.mine.add(key);
          else cur.msg.mine.delete(key);
          renderReactions(cur);
        })
        .catch((err) => toast(`Could not react: ${err.message}`));
      return;
    }
    case 'reply':
    case 'edit':
      return startCompose(v, b.dataset.act, seq);
    case 'delete':
      // Two clicks rather than a dialog: the first arms the button for a moment.
      if (!('armed' in b.dataset)) {
        b.dataset.armed = '';
        b.textContent = 'Delete?';
        setTimeout(() => {
          delete b.dataset.armed;
          b.textContent = 'Delete';
        }, 3000);
        return;
      }
      delete b.dataset.armed;
      b.textContent = 'Delete';
      client.delete(room, seq).catch((err) => toast(`Could not delete: ${err.message}`));
      return;
    case 'quote': {
      const target = v.bySeq.get(Number(li.dataset.replyTo));
      if (!target) return toast('That message is further up: load older messages to see it.');
      target.scrollIntoView({ block: 'center', behavior: 'smooth' });
      target.classList.add('flash');
      setTimeout(() => target.classList.remove('flash'), 1200);
    }
  }
}

/** The composer replies to, or edits, message `seq` until sent or cancelled. */
function startCompose(v, mode, seq) {
  const li = v.bySeq.get(seq);
  if (!li || v.room !== active) return;
  endCompose();
  compose = { room: v.room, seq, mode };
  $('compose-what').textContent = mode === 'edit' ? 'Editing your message' : `Replying to ${quoteText(v, seq)}`;
  $('compose-bar').hidden = false;
  $('composer').classList.toggle('editing', mode === 'edit');
  $('composer').querySelector('button[type=submit]').textContent = mode === 'edit' ? 'Save' : 'Send';
  if (mode === 'edit') input.value = li.msg.body;
  autosize();
  input.focus();
}

function endCompose() {
  if (!compose) return;
  // The text of an unfinished edit is the old message, not a draft: drop it.
  if (compose.mode === 'edit') input.value = '';
  compose = null;
  $('compose-bar').hidden = true;
  $('composer').classList.remove('editing');
  $('composer').querySelector('button[type=submit]').textContent = 'Send';
  autosize();
}

$('compose-cancel').addEventListener('click', () => {
  endCompose();
  input.focus();
});

function settle(li, seq, ts) {
  li.dataset.seq = seq;
  delete li.dataset.pending;
  li.classList.remove('pending');
  li.querySelector('.note').textContent = '';
  const t = li.querySelector('time');
  const d = new Date(ts);
  t.dateTime = d.toISOString();
  t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  t.title = d.toLocaleString();
}

/** Insert in seq order; pending copies (no seq yet) stay below every stored message. */
function place(v, li, seq) {
  const list = v.list;
  const first = list.firstElementChild;
  if (first && Number(first.dataset.seq) > seq) {
    list.insertBefore(li, first); // older than everything: history
  } else {
    // New messages land near the bottom, so walk up from there.
    let at = list.lastElementChild;
    while (at && !(Number(at.dataset.seq) < seq)) at = at.previousElementSibling;
    list.insertBefore(li, at ? at.nextElementSibling : list.firstElementChild);
  }
  group(li);
  if (li.nextElementSibling) group(li.nextElementSibling);
}

/** Consecutive messages of one author within five minutes share one header. */
function group(li) {
  const prev = li.previousElementSibling;
  const t = (x) => Date.parse(x.querySelector('time').dateTime || 0) || Date.now();
  li.classList.toggle(
    'cont',
    !!prev && prev.dataset.from === li.dataset.from && !prev.classList.contains('failed') && t(li) - t(prev) < 5 * 60e3,
  );
}

// ---- composer ---------------------------------------------------------------------------------

const input = $('composer-input');

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const body = input.value.trim();
  if (!body || !active) return;
  if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) {
    toast('That message is too long.');
    return;
  }
  if (compose?.mode === 'edit') {
    const { room, seq } = compose;
    const old = views.get(room)?.bySeq.get(seq)?.msg.body;
    endCompose();
    // The new state shows when the room's `update` comes, as it does for everyone.
    if (body !== old) client.edit(room, seq, body).catch((err) => toast(`Could not edit: ${err.message}`));
    return;
  }
  const meta = compose?.mode === 'reply' ? { reply_to: compose.seq } : undefined;
  endCompose();
  input.value = '';
  autosize();
  const v = views.get(active);
  // Optimistic copy: on screen at once, settled by its ack or its `message` (same cid).
  const sent = client.send(active, body, { meta });
  const li = messageItem(v, { ...sent, name: me });
  li.dataset.pending = '';
  li.classList.add('pending');
  li.querySelector('.note').textContent = 'sending…';
  v.list.append(li);
  group(li);
  scrollToBottom(v);
});

input.addEventListener('keydown', (e) => {
  // Enter sends, Shift+Enter is a new line.
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('composer').requestSubmit();
  } else if (e.key === 'Escape' && compose) {
    endCompose();
  }
});

input.addEventListener('input', () => {
  autosize();
  if (active && input.value.trim() && compose?.mode !== 'edit') client.typing(active);
});

function autosize() {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

// ---- typing -----------------------------------------------------------------------------------

function onTyping({ room, user }) {
  const v = views.get(room);
  if (!v) return;
  clearTimeout(v.typing.get(user));
  v.typing.set(user, setTimeout(() => stopTyping(v, user), TYPING_SHOWN_MS));
  if (room === active) renderTyping();
}

function stopTyping(v, user) {
  if (!v.typing.has(user)) return;
  clearTimeout(v.typing.get(user));
  v.typing.delete(user);
  if (v.room === active) renderTyping();
}

function renderTyping() {
  const v = views.get(active);
  const names = v ? [...v.typing.keys()].map((u) => nameOf(v, u)) : [];
  const el = $('typing');
  el.textContent =
    names.length === 0
      ? ''
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length === 2
          ? `${names[0]} and ${names[1]} are typing…`
          : `${names.length} people are typing…`;
  el.classList.toggle('on', names.length > 0);
}

function nameOf(v, user) {
  return v.presence.find((p) => p.user === user)?.name ?? user;
}

// ---- presence, unread ------------------------------------------------------------------------

function renderPresence() {
  const v = views.get(active);
  const users = v ? [...v.presence].sort((a, b) => a.name.localeCompare(b.name)) : [];
  $('presence').replaceChildren(
    ...users.map((p) => {
      const li = document.createElement('li');
      li.dataset.testid = 'presence-user';
      li.dataset.user = p.user;
      const av = document.createElement('div');
      av.className = 'avatar';
      paintAvatar(av, p.name);
      const name = document.createElement('span');
      name.textContent = p.user === me ? `${p.name} (you)` : p.name;
      li.append(av, name);
      // Moderators, owners and admins get kick and ban; the server decides whether each
      // request is allowed (a moderator cannot kick an owner) and says so if not.
      if (p.user !== me && client?.canModerate(active)) li.append(modButton(p, false), modButton(p, true));
      return li;
    }),
  );
  const count = v?.count ?? users.length;
  $('presence-count').textContent = count ? String(count) : '';
  if (v?.truncated) {
    const more = document.createElement('li');
    more.className = 'presence-more';
    more.dataset.testid = 'presence-more';
    more.textContent = `and ${Math.max(0, count - users.length)} more`;
    $('presence').append(more);
  }
}

function modButton(p, ban) {
  const b = document.createElement('button');
  b.className = 'mod';
  b.dataset.testid = ban ? 'presence-ban' : 'presence-kick';
  b.textContent = ban ? 'Ban' : 'Kick';
  b.title = `${ban ? 'Ban' : 'Kick'} ${p.name} from #${active}`;
  const room = active;
  b.addEventListener('click', () =>
    client
      .kick(room, p.user, { ban })
      .then(() => toast(`${p.name} was ${ban ? 'banned from' : 'kicked from'} #${room}.`))
      .catch((err) => toast(`Could not ${ban ? 'ban' : 'kick'} ${p.name}: ${err.message}`)),
  );
  return b;
}

function renderRoomMeta() {
  const v = views.get(active);
  $('room-meta').textContent = v ? `${v.count ?? v.presence.length} online` : '';
}

function renderUnread(v) {
  // Unread: what lies past the read marker, less our own messages we know of.
  let n = Math.max(0, v.lastSeq - v.read);
  if (n) for (const [seq, li] of v.bySeq) if (seq > v.read && li.dataset.from === me) n--;
  const badge = v.item.querySelector('.badge');
  badge.textContent = n > 99 ? '99+' : String(n);
  badge.hidden = n === 0;
  v.item.classList.toggle('unread', n > 0);
}

function markRead(v) {
  // Read means seen: the room is on screen and the tab is visible.
  if (!v.joined || v.room !== active || document.visibilityState !== 'visible') return;
  if (v.lastSeq <= v.read) return;
  v.read = v.lastSeq;
  renderUnread(v);
  clearTimeout(v.readTimer);
  // One read frame per burst of messages is enough: the marker only moves forward.
  v.readTimer = setTimeout(() => {
    v.readTimer = null;
    client?.read(v.room, v.read).catch(() => {});
  }, 250);
}

document.addEventListener('visibilitychange', () => {
  const v = views.get(active);
  if (v) markRead(v);
  if (document.visibilityState === 'visible') refreshConversations();
});

// Back on the page: other tabs and devices may have moved our conversations on.
addEventListener('focus', () => refreshConversations());

// ---- little helpers ---------------------------------------------------------------------------

function nearBottom(v) {
  const el = v.el;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function scrollToBottom(v) {
  v.el.scrollTop = v.el.scrollHeight;
}

function paintAvatar(el, name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  el.style.setProperty('--hue', h);
  el.textContent = [...name][0]?.toUpperCase() ?? '?';
}

function toast(text) {
  const t = document.createElement('div');
  t.className = 'toast';
  t.dataset.testid = 'toast';
  t.textContent = text;
  document.body.append(t);
  setTimeout(() => t.remove(), 5000);
}
