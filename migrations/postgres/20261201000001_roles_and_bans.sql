-- Room roles and bans (protocol v1.1, "Roles and revocation").
--
-- A member row now carries the user's role in the room. Rows count in public rooms too: a
-- moderator of a public room is a row there, and it admits nobody who was not admitted anyway.
alter table room_members
    add column role text collate "C" not null default 'member'
        check (role in ('member', 'moderator', 'owner'));

-- A ban keeps a user out of a room (checked on every join) until it is lifted. It is kept
-- apart from room_members so a ban outlives a membership change and an unban restores the
-- membership the user had.
create table room_bans (
    room_id    text collate "C" not null,
    user_id    text collate "C" not null,
    created_at timestamptz not null default now(),
    primary key (room_id, user_id)
);
