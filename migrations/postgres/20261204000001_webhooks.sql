-- Webhooks (protocol v1.1): the outbox. A `message.offline` row is inserted by the append that
-- stores its message (the same statement, so the same transaction: never lost, never
-- invented); a `user.offline` row by the node that saw the user's last socket go. A delivered
-- row is deleted; one that keeps failing past `webhooks.dead_after_s` stays as `dead`.
create table webhook_events (
    id         bigserial primary key,
    -- What orders delivery: 'r:' || room for a room's events, 'u:' || user for a user's.
    okey       text collate "C" not null,
    kind       text collate "C" not null check (kind in ('message.offline', 'user.offline')),
    room_id    text collate "C",
    seq        bigint,
    -- The sender of a message event; the user of a user event.
    user_id    text collate "C" not null,
    name       text,
    -- message.offline: the offline members as the first attempt found them (a JSON array), so
    -- every retry of the event says the same.
    users      text,
    ts         bigint not null,
    state      text collate "C" not null default 'pending' check (state in ('pending', 'dead')),
    attempts   integer not null default 0,
    -- ms since the Unix epoch: not retried before this.
    next_at    bigint not null default 0,
    created_at bigint not null,
    last_error text
);

-- The dispatcher's two questions: which pending events are due (oldest first), and is an
-- older event of the same key still pending (then this one waits).
create index webhook_events_pending on webhook_events (id) where state = 'pending';
create index webhook_events_order on webhook_events (okey, id) where state = 'pending';
