-- Dynamic audiences: membership kept current and every entry and exit published on a feed.

ALTER TABLE audience_versions ADD COLUMN dynamic boolean NOT NULL DEFAULT false;

-- The version whose full evaluation the stored membership reflects, and when that ran (NULL: none).
ALTER TABLE audiences ADD COLUMN membership_version integer;
ALTER TABLE audiences ADD COLUMN membership_time timestamptz;

CREATE TABLE dynamic_members (
    tenant_id   text        NOT NULL,
    audience_id text        NOT NULL,
    member_id   text        NOT NULL,
    -- The audience version the member entered under.
    version     integer     NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, audience_id, member_id)
);

-- The outbox, with tagging's contract: (txid, seq) order, handed out once settled.
CREATE TABLE feed (
    tenant_id   text        NOT NULL,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    -- 1 entered, 2 exited.
    kind        smallint    NOT NULL,
    audience_id text        NOT NULL,
    member_id   text        NOT NULL,
    version     integer     NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, txid, seq)
);

-- How far the audience service has followed tagging's feed, per tenant.
CREATE TABLE followers (
    tenant_id      text NOT NULL PRIMARY KEY,
    tagging_cursor text NOT NULL DEFAULT ''
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['dynamic_members', 'feed', 'followers'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
