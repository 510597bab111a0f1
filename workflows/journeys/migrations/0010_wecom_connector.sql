-- WeCom (企业微信, issue 24): each tenant's connector (the corp app MemberOps signs in as, the keys
-- of WeCom's callbacks, the dimensions pushed and pulled), the WeCom corp tag groups and tags the
-- sync created for pushed dimensions and their values, and where the tenant's sync stands (its
-- tagging feed cursor, counters, the batch in progress, the full reconciliation). No row here
-- holds a member id or a WeCom external_userid: a batch in progress is a feed position and a
-- count, read again from the feed after a crash (workflows/wecom/push.py).

CREATE TABLE wecom_connectors (
    tenant_id        text        PRIMARY KEY,
    corp_id          text        NOT NULL,
    -- The customer-contact secret and the EncodingAESKey: never returned by the API, never logged.
    secret           text        NOT NULL,
    callback_token   text        NOT NULL,
    encoding_aes_key text        NOT NULL,
    push_dimensions  text[]      NOT NULL DEFAULT '{}',
    pull_dimensions  text[]      NOT NULL DEFAULT '{}',
    enabled          boolean     NOT NULL DEFAULT false,
    version          bigint      NOT NULL CHECK (version > 0),
    update_time      timestamptz NOT NULL
);

-- A pushed dimension's corp tag group (value '') and its values' tags, as created in WeCom; `name`
-- is the name WeCom holds, so a display name changed in MemberOps is renamed there (edit_corp_tag).
CREATE TABLE wecom_tags (
    tenant_id   text        NOT NULL,
    dimension   text        NOT NULL,
    value       text        NOT NULL,
    group_id    text        NOT NULL,
    -- '' on the group's row.
    tag_id      text        NOT NULL,
    name        text        NOT NULL,
    update_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, dimension, value),
    CHECK ((value = '') = (tag_id = ''))
);
CREATE UNIQUE INDEX wecom_tags_tag ON wecom_tags (tenant_id, tag_id) WHERE tag_id <> '';
CREATE INDEX wecom_tags_group ON wecom_tags (tenant_id, group_id);

CREATE TABLE wecom_sync (
    tenant_id          text        PRIMARY KEY,
    -- The tagging feed cursor through which member tag changes are in WeCom; `started` once the
    -- push took its first cursor (the feed's end then: what came before is the reconciliation's).
    cursor             text        NOT NULL DEFAULT '',
    started            boolean     NOT NULL DEFAULT false,
    -- The batch in progress: the feed entry it ends at ('' when none) and how many of its members
    -- (in the order of first appearance) are done; written after each member's mark_tag.
    pending_end        text        NOT NULL DEFAULT '',
    pending_done       integer     NOT NULL DEFAULT 0,
    members_marked     bigint      NOT NULL DEFAULT 0,
    -- Members whose tags changed but who have no WeCom identity (external_userid and staff userid).
    members_skipped    bigint      NOT NULL DEFAULT 0,
    tags_pulled        bigint      NOT NULL DEFAULT 0,
    callbacks_received bigint      NOT NULL DEFAULT 0,
    callbacks_refused  bigint      NOT NULL DEFAULT 0,
    last_push_time     timestamptz,
    last_error         text        NOT NULL DEFAULT '',
    -- The running or latest full reconciliation: its request id and state, its place in the
    -- feed's member entries (cursor, the page in progress's end and members done), its figures.
    resync_request_id  text        NOT NULL DEFAULT '',
    resync_state       text        NOT NULL DEFAULT ''
                       CHECK (resync_state IN ('', 'running', 'done', 'failed')),
    resync_cursor      text        NOT NULL DEFAULT '',
    resync_page_end    text        NOT NULL DEFAULT '',
    resync_page_done   integer     NOT NULL DEFAULT 0,
    resync_checked     bigint      NOT NULL DEFAULT 0,
    resync_repaired    bigint      NOT NULL DEFAULT 0,
    resync_start       timestamptz,
    resync_end         timestamptz,
    -- Set by the callbacks' pull (a `shuffle` or an unknown change): the sync starts a full
    -- reconciliation of its own when none is running.
    resync_wanted      boolean     NOT NULL DEFAULT false,
    update_time        timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE wecom_connectors ENABLE ROW LEVEL SECURITY;
ALTER TABLE wecom_connectors FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON wecom_connectors
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

ALTER TABLE wecom_tags ENABLE ROW LEVEL SECURITY;
ALTER TABLE wecom_tags FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON wecom_tags
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

ALTER TABLE wecom_sync ENABLE ROW LEVEL SECURITY;
ALTER TABLE wecom_sync FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON wecom_sync
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
