-- Coupon write-off (issue 23): the codes orders used that the coupon rules refuse.
--
-- Using a coupon is an update of its row in `coupons` (0013: state, order_id, use_time,
-- order_amount_minor), conditional on it being available, so two orders racing for one code use
-- it once; a full refund's restore is the reverse update, found by `coupons_order`. Neither needs
-- a table of its own: a restored coupon is an available one again, as if never used.
--
-- A violation is recorded once per order and code (a batch of the feed applied again adds
-- nothing). `violation_id` orders the list newest first; the member's list and the order's look-up
-- have their own indexes.
CREATE TABLE coupon_violations (
    tenant_id    text        NOT NULL,
    violation_id bigint      GENERATED ALWAYS AS IDENTITY,
    order_id     text        NOT NULL,
    member_id    text        NOT NULL,
    code         text        NOT NULL,
    -- memberops.tasks.v1.CouponViolationReason (1-5).
    reason       smallint    NOT NULL CHECK (reason BETWEEN 1 AND 5),
    paid_time    timestamptz NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, violation_id),
    UNIQUE (tenant_id, order_id, code)
);
CREATE INDEX coupon_violations_member ON coupon_violations (tenant_id, member_id, violation_id DESC);

ALTER TABLE coupon_violations ENABLE ROW LEVEL SECURITY;
ALTER TABLE coupon_violations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON coupon_violations
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
