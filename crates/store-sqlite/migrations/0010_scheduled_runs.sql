-- Claims on scheduled runs (see crates/store/src/scheduler.rs; docs/decisions/0012-backups.md,
-- "Scheduling"). With several nodes on one database every node's scheduler fires at the same
-- instant; the first to insert the (task, slot) row runs that slot, the others meet the key and
-- skip it. slot_at is the time the schedule named (unix milliseconds, as every *_at), node who
-- claimed it (host name and process id: informative only). The next claim of a task deletes its
-- claims older than 90 days.
CREATE TABLE scheduled_runs (
    task       TEXT    NOT NULL,
    slot_at    INTEGER NOT NULL,
    node       TEXT    NOT NULL,
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (task, slot_at)
) STRICT;
