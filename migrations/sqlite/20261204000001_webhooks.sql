-- Webhooks: the same outbox as migrations/postgres.
create table webhook_events (
    id         integer primary key autoincrement,
    okey       text not null,
    kind       text not null check (kind in ('message.offline', 'user.offline')),
    room_id    text,
    seq        integer,
    user_id    text not null,
    name       text,
    users      text,
    ts         integer not null,
    state      text not null default 'pending' check (state in ('pending', 'dead')),
    attempts   integer not null default 0,
    next_at    integer not null default 0,
    created_at integer not null,
    last_error text
);

create index webhook_events_pending on webhook_events (id) where state = 'pending';
create index webhook_events_order on webhook_events (okey, id) where state = 'pending';
