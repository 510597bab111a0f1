-- The feed's keys, published read-only, so another service (audience, to keep dynamic audiences
-- current) can follow which members' facts or tags changed with the same cursor contract as
-- ReadFeed, inside its own transactions. Payloads stay with tagging.
CREATE VIEW tagging_read.feed WITH (security_invoker = true) AS
SELECT tenant_id, txid, seq, kind, member_id, create_time
FROM tagging.feed;

GRANT SELECT ON tagging_read.feed TO memberops_app;
