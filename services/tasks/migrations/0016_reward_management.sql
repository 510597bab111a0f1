-- Rewards managed (issue 23): a description, a state (retired rewards stay for their
-- redemptions), a version bumped by each UpdateReward that changes something, a per-member limit
-- kept by a counter row per member and reward, an optional coupon template whose coupon each
-- redemption issues (its code kept on the redemption), and coupon issuances to an audience
-- snapshot (long-running operations run by a Temporal workflow).

ALTER TABLE rewards
    ADD COLUMN description      text        NOT NULL DEFAULT '',
    -- A coupon template id (coupon rewards only); a redemption issues one of its coupons.
    ADD COLUMN coupon_template  text,
    -- 0: no limit.
    ADD COLUMN per_member_limit integer     NOT NULL DEFAULT 0 CHECK (per_member_limit BETWEEN 0 AND 1000),
    -- memberops.tasks.v1.RewardState: 1 active, 2 retired.
    ADD COLUMN state            smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    ADD COLUMN version          integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    ADD COLUMN update_time      timestamptz;
UPDATE rewards SET update_time = create_time;
ALTER TABLE rewards ALTER COLUMN update_time SET NOT NULL, ALTER COLUMN update_time SET DEFAULT now();

ALTER TABLE redemptions ADD COLUMN coupon_code text;

-- Redemptions (draws) each member made of each reward: the per-member limit is the conditional
-- upsert that counts one more (no row comes back at the limit), never a count read first.
CREATE TABLE reward_member_redemptions (
    tenant_id text    NOT NULL,
    reward_id text    NOT NULL,
    member_id text    NOT NULL,
    redeemed  integer NOT NULL CHECK (redeemed > 0),
    PRIMARY KEY (tenant_id, reward_id, member_id),
    FOREIGN KEY (tenant_id, reward_id) REFERENCES rewards (tenant_id, reward_id)
);
INSERT INTO reward_member_redemptions (tenant_id, reward_id, member_id, redeemed)
SELECT tenant_id, reward_id, member_id, count(*) FROM redemptions GROUP BY 1, 2, 3;

-- IssueCouponToAudience: one row per request id (the operation's name), with the snapshot taken
-- of the audience and the counts so far. The workflow `coupon-issuance/{tenant}/{request_id}`
-- hands the snapshot's pages, one at a time, to IssueCouponIssuancePage; a page's counts are added
-- once, with the row of the page (the digest of its audience page token, which may hold a member
-- id, so only the digest is kept), so a retried page adds nothing (and issues nothing twice: each
-- member's coupon has a request id of its own).
CREATE TABLE coupon_issuances (
    tenant_id    text        NOT NULL,
    request_id   text        NOT NULL,
    template_id  text        NOT NULL,
    audience_id  text        NOT NULL,
    snapshot_id  text        NOT NULL,
    campaign     text        NOT NULL DEFAULT '',
    arm          text        NOT NULL DEFAULT '',
    members      bigint      NOT NULL DEFAULT 0,
    issued       bigint      NOT NULL DEFAULT 0,
    skipped      bigint      NOT NULL DEFAULT 0,
    out_of_stock bigint      NOT NULL DEFAULT 0,
    done         boolean     NOT NULL DEFAULT false,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);

CREATE TABLE coupon_issuance_pages (
    tenant_id   text        NOT NULL,
    request_id  text        NOT NULL,
    page        text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id, page),
    FOREIGN KEY (tenant_id, request_id) REFERENCES coupon_issuances (tenant_id, request_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['reward_member_redemptions', 'coupon_issuances', 'coupon_issuance_pages'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
