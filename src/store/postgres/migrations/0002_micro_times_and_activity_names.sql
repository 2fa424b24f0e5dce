-- Times are kept in Unix microseconds from this migration on (0001 stored milliseconds), so
-- creation, update and completion times keep the precision the clients' own clocks have.
-- Zero stays zero: it means "never" for ready_at and "not held" for lock_expires.
UPDATE instances SET
    created_at         = created_at * 1000,
    updated_at         = updated_at * 1000,
    completed_at       = completed_at * 1000,
    scheduled_start_at = scheduled_start_at * 1000,
    ready_at           = ready_at * 1000,
    lock_expires       = lock_expires * 1000;
UPDATE inbox SET visible_at = visible_at * 1000;
UPDATE activities SET
    visible_at   = visible_at * 1000,
    lock_expires = lock_expires * 1000;

-- Activities carry their name and version as columns, so a lease can take only the names a
-- worker's filters accept. Rows queued before this migration have NULL here; the dispatcher
-- reads those from the request itself.
ALTER TABLE activities ADD COLUMN name TEXT;
ALTER TABLE activities ADD COLUMN version TEXT;
