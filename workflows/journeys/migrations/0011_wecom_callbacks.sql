-- WeCom's callbacks (issue 24), as the journeys service's HTTP endpoint took them
-- (services/journeys/wecom_callbacks.py) and before the sync's pull acted on them
-- (workflows/wecom/pull.py). WeCom repeats a callback it had no answer to within 5 seconds, so a
-- waiting callback is stored once per tenant by the SHA-256 of its decrypted message (`digest`):
-- the unique index, not a read first, makes concurrent repeats one row. Only while it waits: two
-- edits of one customer by one staff member within a second are the same message (the event
-- names no tags), and the second, after the first was pulled, must be pulled again; a repeat
-- arriving after its pull is pulled again too, which changes nothing (the pull compares states).
--
-- `external_userid` names a customer: the pull notes the member it resolved to (`member_id`), which
-- erasure moves to the pseudonym while clearing the WeCom ids (services/journeys/erasure_store.py);
-- processed rows are deleted after a retention period by the pull (a row that never resolved to a
-- member is erased by that).
CREATE TABLE wecom_callbacks (
    tenant_id       text        NOT NULL,
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    digest          text        NOT NULL,
    -- `Event` and `ChangeType` of the message (`change_external_contact`, `edit_external_contact`).
    event           text        NOT NULL,
    change_type     text        NOT NULL DEFAULT '',
    external_userid text        NOT NULL DEFAULT '',
    -- The staff member (`UserID`) whose action it reports.
    userid          text        NOT NULL DEFAULT '',
    -- Every top-level element of the message, by name.
    body            jsonb       NOT NULL,
    receive_time    timestamptz NOT NULL DEFAULT now(),
    -- Set by the pull, with what it did (`pulled`, `unchanged`, `no_member`, `resync`, ...) and the
    -- member the external_userid resolved to ('' when none).
    process_time    timestamptz,
    outcome         text        NOT NULL DEFAULT '',
    member_id       text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX wecom_callbacks_waiting_digest ON wecom_callbacks (tenant_id, digest)
    WHERE process_time IS NULL;
-- The pull's queue: the unprocessed rows of a tenant, oldest first.
CREATE INDEX wecom_callbacks_unprocessed ON wecom_callbacks (tenant_id, id) WHERE process_time IS NULL;
-- Erasure finds the member's rows; retention finds the old processed ones.
CREATE INDEX wecom_callbacks_member ON wecom_callbacks (tenant_id, member_id) WHERE member_id <> '';
CREATE INDEX wecom_callbacks_processed ON wecom_callbacks (tenant_id, process_time)
    WHERE process_time IS NOT NULL;

-- What the pull last saw a staff member's relationship with a customer hold in WeCom, per pulled
-- dimension (value names, not tag ids, so a tag created again keeps its meaning): the base of the
-- pull's three-way comparison, so only what staff changed since is applied, never a MemberOps
-- change WeCom has not been given yet. Derived data: erasure deletes the member's rows.
CREATE TABLE wecom_seen_tags (
    tenant_id       text        NOT NULL,
    external_userid text        NOT NULL,
    userid          text        NOT NULL,
    -- The member the external_userid resolved to when it was seen.
    member_id       text        NOT NULL,
    -- {dimension: [value, ...]} of the pulled dimensions that had WeCom tags then.
    seen            jsonb       NOT NULL,
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, external_userid, userid)
);
CREATE INDEX wecom_seen_tags_member ON wecom_seen_tags (tenant_id, member_id);

ALTER TABLE wecom_seen_tags ENABLE ROW LEVEL SECURITY;
ALTER TABLE wecom_seen_tags FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON wecom_seen_tags
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

ALTER TABLE wecom_callbacks ENABLE ROW LEVEL SECURITY;
ALTER TABLE wecom_callbacks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON wecom_callbacks
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
