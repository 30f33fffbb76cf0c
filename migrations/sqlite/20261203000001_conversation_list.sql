-- The conversation list: the same column and indexes as migrations/postgres.
alter table rooms add column last_ts integer;

create index room_members_by_user on room_members (user_id);
create index read_markers_by_user on read_markers (user_id);
