-- The message lifecycle: the same columns, tables and rules as migrations/postgres (JSON is
-- kept as text here).
alter table rooms add column last_rev integer not null default 0;

alter table messages add column meta text;
-- Null until the message changes (null rev is 0, null deleted false), as in PostgreSQL.
alter table messages add column rev integer;
alter table messages add column edited_ts integer;
alter table messages add column deleted integer;
alter table messages add column reactions text;
alter table messages add column change text;
alter table messages add column changed_by text;

create index messages_changed on messages (room_id, rev) where rev > 0;

create table reactions (
    room_id text not null,
    seq     integer not null,
    user_id text not null,
    key     text not null,
    primary key (room_id, seq, user_id, key)
) without rowid;
