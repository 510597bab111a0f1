-- Erasures of members' personal data (EraseMember): the audit of who asked, when and why, and the
-- state that lets a retry finish what a failed attempt left (a peer was down).
--
-- `member_id` is the erased member's id in clear only while the erasure is unfinished (a retry
-- needs it to call the peers); finishing sets it NULL, so after an erasure nothing here names the
-- member. No hash of it is kept either: member ids are short and guessable, so a hash of one is
-- the id for anyone who tries the candidates.
CREATE TABLE member_erasures (
    tenant_id    text        NOT NULL,
    request_id   text        NOT NULL,
    member_id    text,
    -- `erased-<hex>`: what the member's remaining facts are kept under. Two requests that erase
    -- the same member at the same time share one.
    pseudonym    text        NOT NULL,
    operator     text        NOT NULL,
    reason       text        NOT NULL,
    erase_time   timestamptz NOT NULL,
    finish_time  timestamptz,
    -- Rows changed per "service.table", summed over attempts (for the audit).
    changed_rows jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, request_id),
    CHECK ((member_id IS NULL) = (finish_time IS NOT NULL))
);
-- An unfinished erasure of a member, found by a second request for the same member.
CREATE INDEX member_erasures_unfinished ON member_erasures (tenant_id, member_id) WHERE member_id IS NOT NULL;

ALTER TABLE member_erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE member_erasures FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON member_erasures
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
