-- Rooms carry their own sequence counter: the Writer locks the counter rows of a batch in
-- room-id order, so seq is gap-free per room and two nodes can never deadlock.
create table rooms (
    id         text primary key,
    last_seq   bigint not null default 0,
    private    boolean not null default false,
    created_at timestamptz not null default now()
);

create table messages (
    room_id text not null references rooms (id),
    seq     bigint not null,
    user_id text not null,
    name    text not null,
    cid     text not null,
    body    text not null,
    ts      bigint not null,
    primary key (room_id, seq),
    -- the idempotency key of a send, forever
    unique (room_id, user_id, cid)
);

create table read_markers (
    room_id text not null,
    user_id text not null,
    seq     bigint not null,
    primary key (room_id, user_id)
);

-- Members of private rooms; public rooms have none.
create table room_members (
    room_id text not null,
    user_id text not null,
    primary key (room_id, user_id)
);
