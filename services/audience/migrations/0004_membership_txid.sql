-- The transaction that last evaluated an audience whole (mark_evaluated). A reader that also reads
-- the feed only once settled (the in-memory membership index) trusts `membership_version` only when
-- this transaction is settled too: then every entry it wrote is among what the reader has read.
ALTER TABLE audiences ADD COLUMN membership_txid xid8;
