-- The version of every audience the last whole evaluation read through references ({id: version}),
-- so a change to a referenced audience makes the stored membership stale like a change to the
-- audience itself (otherwise it waited for the periodic whole evaluation).
ALTER TABLE audiences ADD COLUMN membership_references jsonb NOT NULL DEFAULT '{}';
