-- The sequencer's last snapshot, published (issue 25): a reader that must see every committed
-- transaction, not only those given a position yet (audience's bitmaps, read-your-writes for a
-- count right after a write), finds the ones still waiting for their position as the sequencer
-- does (runtime/feed_sequencer.py): those that began after that snapshot, and those it saw running.
CREATE VIEW tagging_read.feed_sequencer WITH (security_invoker = true) AS
SELECT tenant_id, seen FROM tagging.feed_sequencer;

GRANT SELECT ON tagging_read.feed_sequencer TO memberops_app;
