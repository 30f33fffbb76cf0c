-- The conversation list: the same column and indexes as migrations/postgres.
alter table rooms add column last_ts integer;

-- Rooms active before this migration get the time of their last message.
update rooms set last_ts = (
    select ts from messages m where m.room_id = rooms.id order by seq desc limit 1
) where last_seq > 0;

create index room_members_by_user on room_members (user_id);
create index read_markers_by_user on read_markers (user_id);
