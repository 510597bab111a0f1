-- Coupon templates (versioned like task definitions) and the coupons issued from them.
--
-- A template's stock is a sharded allowance (0014's `allowance_shards`, owner 'coupon:<template_id>',
-- total 10^18 for an unlimited template): concurrent issues take from different shard rows, each
-- by a conditional update. A member's coupons of one template are counted in `coupon_holdings`,
-- taken by a conditional upsert against the per-member limit, so neither limit is a
-- read-then-write. A coupon carries the terms of the version it was
-- issued under; EXPIRED is never stored (an available coupon past `valid_until` reads EXPIRED).

CREATE TABLE coupon_templates (
    tenant_id        text        NOT NULL,
    template_id      text        NOT NULL,
    -- 1 amount off, 2 percent off, 3 free shipping; fixed for the template's life.
    discount_kind    smallint    NOT NULL CHECK (discount_kind BETWEEN 1 AND 3),
    -- memberops.tasks.v1.CouponTemplateState: 1 active, 2 retired.
    state            smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    current_version  integer     NOT NULL DEFAULT 1,
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, template_id)
);

CREATE TABLE coupon_template_versions (
    tenant_id    text        NOT NULL,
    template_id  text        NOT NULL,
    version      integer     NOT NULL,
    body         jsonb       NOT NULL,
    content_hash text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, template_id, version),
    FOREIGN KEY (tenant_id, template_id) REFERENCES coupon_templates (tenant_id, template_id)
);

-- How many coupons of a template a member holds (used or not): the per-member limit's counter.
CREATE TABLE coupon_holdings (
    tenant_id   text    NOT NULL,
    template_id text    NOT NULL,
    member_id   text    NOT NULL,
    held        integer NOT NULL CHECK (held >= 0),
    PRIMARY KEY (tenant_id, template_id, member_id),
    FOREIGN KEY (tenant_id, template_id) REFERENCES coupon_templates (tenant_id, template_id)
);

CREATE TABLE coupons (
    tenant_id          text        NOT NULL,
    -- Ordering only (newest first in a member's list).
    coupon_id          bigint      GENERATED ALWAYS AS IDENTITY,
    code               text        NOT NULL,
    template_id        text        NOT NULL,
    template_version   integer     NOT NULL,
    member_id          text        NOT NULL,
    -- memberops.tasks.v1.CouponState: 1 available, 2 used. EXPIRED is derived when read.
    state              smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    -- The terms, frozen at issue: 1 amount off (`amount_minor`), 2 percent off (`percent`,
    -- `max_discount_minor`, 0 no cap), 3 free shipping.
    discount_kind      smallint    NOT NULL CHECK (discount_kind BETWEEN 1 AND 3),
    amount_minor       bigint      NOT NULL DEFAULT 0,
    percent            integer     NOT NULL DEFAULT 0,
    max_discount_minor bigint      NOT NULL DEFAULT 0,
    -- The member's own threshold (the template's tag thresholds applied at issue).
    threshold_minor    bigint      NOT NULL CHECK (threshold_minor >= 0),
    categories         text[]      NOT NULL DEFAULT '{}',
    skus               text[]      NOT NULL DEFAULT '{}',
    valid_from         timestamptz NOT NULL,
    valid_until        timestamptz NOT NULL,
    source_campaign    text        NOT NULL DEFAULT '',
    source_arm         text        NOT NULL DEFAULT '',
    -- Set when used (write-off), cleared when restored; the order's amount is for the stats.
    order_id           text,
    use_time           timestamptz,
    order_amount_minor bigint,
    request_id         text        NOT NULL,
    -- What the request asked for, so a reused request id with other content is recognised.
    content_hash       text        NOT NULL,
    issue_time         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, code),
    UNIQUE (tenant_id, request_id),
    UNIQUE (tenant_id, coupon_id),
    FOREIGN KEY (tenant_id, template_id) REFERENCES coupon_templates (tenant_id, template_id),
    CHECK (valid_from < valid_until),
    CHECK ((state = 2) = (order_id IS NOT NULL))
);
CREATE INDEX coupons_member ON coupons (tenant_id, member_id, coupon_id DESC);
CREATE INDEX coupons_campaign ON coupons (tenant_id, source_campaign, source_arm);
CREATE INDEX coupons_template_used ON coupons (tenant_id, template_id) WHERE state = 2;
CREATE INDEX coupons_order ON coupons (tenant_id, order_id) WHERE order_id IS NOT NULL;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['coupon_templates', 'coupon_template_versions', 'coupon_holdings',
                             'coupons'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
