-- The conversation list (protocol v1.1): each room's last activity, written by the append that
-- advances its head (the same row, the same statement), and a user's rooms found by user id:
-- the member rows and read markers are keyed by room first, so without these indexes the list
-- would scan both tables.
alter table rooms add column last_ts bigint;

-- Rooms active before this migration get the time of their last message (one index probe
-- per room, on the primary key).
update rooms set last_ts = (
    select ts from messages m where m.room_id = rooms.id order by seq desc limit 1
) where last_seq > 0;

create index room_members_by_user on room_members (user_id);
create index read_markers_by_user on read_markers (user_id);
