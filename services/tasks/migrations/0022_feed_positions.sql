-- Positions in commit order for the tasks feed (tasks.feed) (issue 25): an entry was handed out only
-- once its transaction was older than every transaction still running, so any long transaction in
-- the database held every feed back. Now the service's sequencer (runtime/feed_sequencer.py) gives
-- each committed transaction that wrote entries the next position, and readers order entries by
-- (position, seq), seeing nothing of a transaction before its position (runtime/outbox.py).
-- Writers do nothing more: the sequencer finds the transactions committed since its last round
-- through that round's snapshot (`feed_sequencer.seen`).

-- Each committed writing transaction's place in the feed. Positions come from one sequence and are
-- assigned by one sequencer at a time (an advisory lock held to its commit), so they become
-- visible in increasing order.
CREATE TABLE feed_positions (
    tenant_id text   NOT NULL,
    position  bigint NOT NULL,
    txid      xid8   NOT NULL,
    PRIMARY KEY (tenant_id, position),
    UNIQUE (tenant_id, txid)
);

CREATE SEQUENCE feed_position;

-- The snapshot of the tenant's last sequencing round: every transaction it saw committed has its
-- position, so the next round looks only at transactions it saw running or that began after it.
CREATE TABLE feed_sequencer (
    tenant_id text        NOT NULL PRIMARY KEY,
    seen      pg_snapshot NOT NULL
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['feed_positions', 'feed_sequencer'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;

-- Every transaction committed so far, in txid order: the order the first contract read them in, so
-- a stored `<txid>-<seq>` cursor resolves to its transaction's position and loses nothing. The
-- same statement's snapshot is each tenant's first `seen`: what was still running then is found
-- by the sequencer's first round.
WITH numbered AS (
    INSERT INTO feed_positions (tenant_id, position, txid)
    SELECT tenant_id, row_number() OVER (ORDER BY txid, tenant_id), txid
    FROM (SELECT DISTINCT tenant_id, txid FROM feed) AS written
    RETURNING tenant_id)
INSERT INTO feed_sequencer (tenant_id, seen)
SELECT t.tenant_id, pg_current_snapshot() FROM (SELECT DISTINCT tenant_id FROM numbered) AS t;

SELECT setval('feed_position', coalesce((SELECT max(position) FROM feed_positions), 0) + 1, false);
