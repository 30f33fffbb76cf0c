-- The message lifecycle (protocol v1.1): metadata, edits, deletes and reactions.
--
-- A room gets a second counter, `last_rev`, advanced by every committed change of one of its
-- messages, gap-free like `last_seq` and taken under the same row lock. A message keeps only
-- its current state: `rev` is the revision of its last change (0: never changed), with that
-- change's kind and author, so a node or a client that missed changes reads "every message
-- whose rev is past mine" and gets each one whole. A delete erases body and meta in place.
-- Every new column of `messages` is null until the message changes (null `rev` is 0, null
-- `deleted` false), so a plain send writes nothing more than null bits and the table is not
-- rewritten. The partial index holds only changed messages (readers say `rev > 0` so that
-- even a generic plan can use it), so it stays small and costs plain sends nothing.
alter table rooms add column last_rev bigint not null default 0;

alter table messages
    add column meta       jsonb,
    add column rev        bigint,
    add column edited_ts  bigint,
    add column deleted    boolean,
    -- Reaction counts, `[{"key", "count"}]` in first-use order: read with every message
    -- without touching `reactions`.
    add column reactions  jsonb,
    add column change     text collate "C",
    add column changed_by text collate "C";

create index messages_changed on messages (room_id, rev) where rev > 0;

-- Who reacted with what: the truth behind the counts (a toggle is idempotent per user and
-- key, and a user's own keys come back with `history`). Keyed by room first, like every table.
create table reactions (
    room_id text collate "C" not null,
    seq     bigint not null,
    user_id text collate "C" not null,
    key     text collate "C" not null,
    primary key (room_id, seq, user_id, key)
);
