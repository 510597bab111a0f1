-- Facts happen at their own time, and so do the tag changes they cause (issue 19).
--
-- A queued refresh remembers when its facts happened (the latest, when several wait), so the tag
-- changes it makes are dated by the fact, not by when it was recorded: a year-old order loaded
-- today changes tags "a year ago" as far as a consumer deciding what is news is concerned. NULL
-- in rows queued before this column: such a refresh dates its changes by its own clock.
ALTER TABLE refresh_queue ADD COLUMN fact_time timestamptz;

-- The published feed gains each entry's own time: an order's paid_time, a refund's refund_time, an
-- event's or tag change's occur_time; a member change (and any entry written before tag changes
-- were dated) happened when it was written.
CREATE OR REPLACE VIEW tagging_read.feed WITH (security_invoker = true) AS
SELECT tenant_id, txid, seq, kind, member_id, create_time,
       coalesce((payload->>'occur_time')::timestamptz, (payload->>'paid_time')::timestamptz,
                (payload->>'refund_time')::timestamptz, create_time) AS occur_time
FROM tagging.feed;
