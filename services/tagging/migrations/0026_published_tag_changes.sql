-- The published feed names what a tag change changed (issue 25): audience keeps a bitmap per
-- (dimension, value) in step with the feed, and re-reads exactly the (member, dimension) pairs an
-- entry names instead of every tag of the member. NULL for entries of other kinds. Appended: a
-- view's columns only grow.
CREATE OR REPLACE VIEW tagging_read.feed WITH (security_invoker = true) AS
SELECT tenant_id, txid, seq, kind, member_id, create_time,
       coalesce((payload->>'occur_time')::timestamptz, (payload->>'paid_time')::timestamptz,
                (payload->>'refund_time')::timestamptz, create_time) AS occur_time,
       coalesce((payload->>'backfilled')::boolean, false) AS backfilled,
       CASE WHEN kind = 5 THEN subject_id END AS tag_dimension,
       CASE WHEN kind = 5 THEN payload->>'value' END AS tag_value
FROM tagging.feed;
