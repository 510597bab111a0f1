-- Positions in commit order for audience's feed (audience.feed) (issue 25): an entry was handed out only
-- once its transaction was older than every transaction still running, so any long transaction in
-- the database held every feed back. Now each writing transaction registers itself once (a
-- statement-level trigger: one row per transaction, none per entry), and once it has committed the
-- service's sequencer (runtime/feed_sequencer.py) gives it the next position. Readers order entries
-- by (position, seq) and see nothing of a transaction before its position (runtime/outbox.py).

-- Transactions that wrote entries and have no position yet: a row is visible only once its
-- transaction committed, and one rolled back leaves none.
CREATE TABLE feed_pending (
    tenant_id text NOT NULL,
    txid      xid8 NOT NULL,
    PRIMARY KEY (tenant_id, txid)
);

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

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['feed_pending', 'feed_positions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;

-- Once per statement that inserts into the feed (a repeat within the transaction conflicts and does
-- nothing). The tenant is the transaction's: the feed's policy admits no other.
CREATE FUNCTION register_feed_transaction() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO audience.feed_pending (tenant_id, txid)
    VALUES (current_setting('memberops.tenant_id'), pg_current_xact_id())
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$;

-- Creating the trigger waits for the transactions writing the feed now and holds new ones until
-- this migration commits, so every entry is either numbered below or registered by the trigger.
CREATE TRIGGER feed_registers_transaction AFTER INSERT ON feed
    FOR EACH STATEMENT EXECUTE FUNCTION register_feed_transaction();

-- Every transaction written so far, in txid order: the order the first contract read them in, so a
-- stored `<txid>-<seq>` cursor resolves to its transaction's position and loses nothing.
INSERT INTO feed_positions (tenant_id, position, txid)
SELECT tenant_id, row_number() OVER (ORDER BY txid, tenant_id), txid
FROM (SELECT DISTINCT tenant_id, txid FROM feed) AS written;

SELECT setval('feed_position', coalesce((SELECT max(position) FROM feed_positions), 0) + 1, false);
