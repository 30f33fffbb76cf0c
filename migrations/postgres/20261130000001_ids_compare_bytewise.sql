-- Ids compare bytewise. They are opaque keys whose order only has to be stable, yet under the
-- database's default locale every index probe and sort on them went through the locale's
-- comparison (varstr_cmp and pg_newlocale_from_collation led PostgreSQL's profile of the
-- writer). "C" compares with memcmp. Changing a column's collation rebuilds the indexes on
-- it: on a large existing table run this in a maintenance window.
--
-- The foreign key from messages to rooms goes: it cost one lookup and row lock per inserted
-- message, and the only writer of messages creates the room's counter row in the same
-- statement that inserts them (see the PostgreSQL store's append).
alter table messages drop constraint messages_room_id_fkey;

alter table rooms alter column id type text collate "C";
alter table messages
    alter column room_id type text collate "C",
    alter column user_id type text collate "C",
    alter column cid type text collate "C";
alter table read_markers
    alter column room_id type text collate "C",
    alter column user_id type text collate "C";
alter table room_members
    alter column room_id type text collate "C",
    alter column user_id type text collate "C";
