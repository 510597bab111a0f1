-- A coupon's issue in one round trip (services/tasks/coupons/issuing.py): the same steps ran as
-- BEGIN and tenant, two statements and COMMIT from Python, four round trips per ClaimCoupon, and a
-- refusal or a retry read the request id in a transaction of its own, three more. In order: the
-- coupon `p_request_id` issued before, if any (the caller compares its content); else a key-share
-- lock on the template if it is still active at the version the caller read its terms from (an
-- update or a retirement, which lock the row for update, waits for this transaction; after such a
-- wait the row is rechecked, so a newer version is refused as stale), the member's holding counted
-- against the per-member limit (a conditional upsert: one row per member and template, so members
-- never wait for each other), the coupon under the first code of `p_codes` not taken, and last one
-- unit of the template's stock (`take_allowance`). A refusal raises, so nothing is written:
-- MC001 stale (retired, gone or at another version: read it again); MC002 the member's limit,
-- unless the holding is full because the request id's first issue committed meanwhile (that coupon
-- is returned); MC003 out of stock (no coupon of the request id can exist then: this statement has
-- just written it under the unique request id); MC004 every code taken. A request id another
-- transaction issues while this one runs raises unique_violation. Each statement sees what committed
-- before it began, so a lookup after a wait sees the transaction waited for.
-- Called as one autocommitted statement (ClaimCoupon, IssueCoupon) or inside a caller's tenant
-- transaction (a reward's redemption, a level benefit, a journey step); like add_earning it enters
-- the tenant itself (role and setting, local to the transaction), so row-level security applies.

CREATE FUNCTION issue_coupon(
    p_tenant text, p_template text, p_version integer, p_member text, p_limit integer, p_codes text[],
    p_discount_kind smallint, p_amount bigint, p_percent integer, p_max_discount bigint,
    p_threshold bigint, p_categories text[], p_skus text[], p_valid_from timestamptz,
    p_valid_until timestamptz, p_campaign text, p_arm text, p_request_id text, p_hash text,
    p_issue_time timestamptz, p_stock text
) RETURNS SETOF coupons
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    v_code text;
    c coupons;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    SELECT * INTO c FROM coupons WHERE tenant_id = p_tenant AND request_id = p_request_id;
    IF FOUND THEN
        RETURN NEXT c;
        RETURN;
    END IF;
    PERFORM FROM coupon_templates
    WHERE tenant_id = p_tenant AND template_id = p_template AND state = 1 AND current_version = p_version
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'MC001';
    END IF;
    INSERT INTO coupon_holdings AS h (tenant_id, template_id, member_id, held)
    VALUES (p_tenant, p_template, p_member, 1)
    ON CONFLICT (tenant_id, template_id, member_id) DO UPDATE SET held = h.held + 1
    WHERE h.held < p_limit;
    IF NOT FOUND THEN
        -- The holding may have been full of this very request (a retry that waited for the first).
        SELECT * INTO c FROM coupons WHERE tenant_id = p_tenant AND request_id = p_request_id;
        IF FOUND THEN
            RETURN NEXT c;
            RETURN;
        END IF;
        RAISE SQLSTATE 'MC002';
    END IF;
    FOREACH v_code IN ARRAY p_codes LOOP
        INSERT INTO coupons (tenant_id, code, template_id, template_version, member_id, discount_kind,
                             amount_minor, percent, max_discount_minor, threshold_minor, categories, skus,
                             valid_from, valid_until, source_campaign, source_arm, request_id, content_hash,
                             issue_time)
        VALUES (p_tenant, v_code, p_template, p_version, p_member, p_discount_kind, p_amount, p_percent,
                p_max_discount, p_threshold, p_categories, p_skus, p_valid_from, p_valid_until, p_campaign,
                p_arm, p_request_id, p_hash, p_issue_time)
        ON CONFLICT (tenant_id, code) DO NOTHING
        RETURNING * INTO c;
        EXIT WHEN FOUND;
    END LOOP;
    IF c.code IS NULL THEN
        RAISE SQLSTATE 'MC004';
    END IF;
    IF NOT take_allowance(p_stock, 1) THEN
        RAISE SQLSTATE 'MC003';
    END IF;
    RETURN NEXT c;
END
$$;
