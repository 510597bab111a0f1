-- The published feed says which entries are history an import loaded (issue 20: the payload's
-- `backfilled`, FeedEntry.backfilled on ReadFeed), so audience can mark the entries and exits those
-- entries alone caused as history too, and no journey enrols on them.
CREATE OR REPLACE VIEW tagging_read.feed WITH (security_invoker = true) AS
SELECT tenant_id, txid, seq, kind, member_id, create_time,
       coalesce((payload->>'occur_time')::timestamptz, (payload->>'paid_time')::timestamptz,
                (payload->>'refund_time')::timestamptz, create_time) AS occur_time,
       coalesce((payload->>'backfilled')::boolean, false) AS backfilled
FROM tagging.feed;
