-- The embedded store: the same tables and guarantees as migrations/postgres.
create table rooms (
    id         text primary key,
    last_seq   integer not null default 0,
    private    integer not null default 0,
    created_at integer not null default (unixepoch())
);

create table messages (
    room_id text not null references rooms (id),
    seq     integer not null,
    user_id text not null,
    name    text not null,
    cid     text not null,
    body    text not null,
    ts      integer not null,
    primary key (room_id, seq),
    unique (room_id, user_id, cid)
) without rowid;

create table read_markers (
    room_id text not null,
    user_id text not null,
    seq     integer not null,
    primary key (room_id, user_id)
) without rowid;

create table room_members (
    room_id text not null,
    user_id text not null,
    primary key (room_id, user_id)
) without rowid;
