-- A refund takes back its share of what its order earned, as it arrives on tagging's feed: one
-- reversal entry per refund, its id in the note ('refund <id>'). ReverseOrderPoints' reversal of
-- the whole order keeps an empty note and stays one per order.
DROP INDEX ledger_entries_reversal;
CREATE UNIQUE INDEX ledger_entries_reversal ON ledger_entries (tenant_id, member_id, reference, note)
    WHERE reason = 6;
