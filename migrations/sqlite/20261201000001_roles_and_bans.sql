-- Room roles and bans: the same tables and rules as migrations/postgres.
alter table room_members
    add column role text not null default 'member'
        check (role in ('member', 'moderator', 'owner'));

create table room_bans (
    room_id    text not null,
    user_id    text not null,
    created_at integer not null default (unixepoch()),
    primary key (room_id, user_id)
) without rowid;
