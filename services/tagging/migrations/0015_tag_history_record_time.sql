-- Tag history on two time axes (issue 20): valid time (valid_from/valid_to: when, in the shop's
-- world, the member held the value) and record time (when MemberOps came to believe it).
--
-- member_tags stays the current belief, so every "held now" query (`valid_to IS NULL`) and the
-- audiences are untouched. A row is changed in place only by a forward close (valid_to set to a
-- time no earlier than the closing statement's clock: what recompute and refresh do). Any other
-- change (a correction of the past: a back-dated fact, RecomputeTags(as_of), a history rebuild)
-- first copies the old version to member_tags_superseded. What was believed at K about time X:
-- member_tags rows with coalesce(record_time, valid_from) <= K, plus superseded versions with
-- record_time <= K < supersede_time, a valid_to later than K read as open (the close was not known
-- yet), then valid_from <= X < valid_to.

-- NULL in rows written before this column: read as valid_from (they were written when they began).
ALTER TABLE member_tags ADD COLUMN record_time timestamptz;
ALTER TABLE member_tags ALTER COLUMN record_time SET DEFAULT now();

CREATE TABLE member_tags_superseded (
    tenant_id          text        NOT NULL,
    archive_id         bigint      GENERATED ALWAYS AS IDENTITY,
    -- The member_tags row this was a version of (it may since be deleted).
    id                 bigint      NOT NULL,
    member_id          text        NOT NULL,
    dimension          text        NOT NULL,
    value              text        NOT NULL,
    definition_version integer     NOT NULL,
    source             smallint    NOT NULL,
    exclusive          boolean     NOT NULL,
    valid_from         timestamptz NOT NULL,
    valid_to           timestamptz,
    set_by             text        NOT NULL DEFAULT '',
    reason             text        NOT NULL DEFAULT '',
    removed_by         text        NOT NULL DEFAULT '',
    removed_reason     text        NOT NULL DEFAULT '',
    record_time        timestamptz,
    supersede_time     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, archive_id)
);
CREATE INDEX member_tags_superseded_member ON member_tags_superseded (tenant_id, member_id, valid_from);

ALTER TABLE member_tags_superseded ENABLE ROW LEVEL SECURITY;
ALTER TABLE member_tags_superseded FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON member_tags_superseded
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- Members whose tag history a back-dated fact made wrong: a real-time refresh of facts that
-- happened well before it queues them here in its own transaction (the earliest such fact time and
-- which inputs changed); the history corrector rewrites their history from `since` and deletes the
-- rows it handled (a row a later fact bumped, with a higher seq, stays owed).
CREATE SEQUENCE history_corrections_seq;

CREATE TABLE history_corrections (
    tenant_id text        NOT NULL,
    member_id text        NOT NULL,
    since     timestamptz NOT NULL,
    -- Bits of services.tagging.evaluation.INPUT_BITS.
    inputs    integer     NOT NULL,
    seq       bigint      NOT NULL DEFAULT nextval('history_corrections_seq'),
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id)
);

ALTER TABLE history_corrections ENABLE ROW LEVEL SECURITY;
ALTER TABLE history_corrections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON history_corrections
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
