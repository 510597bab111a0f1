-- Issues of one coupon template at one version to a group of members in one statement
-- (services/tasks/coupons/member_coupons.py groups the issues that arrive while earlier ones are at
-- the database, as sign-ins are grouped: decision 160). tasks.issue_coupon (0020) does one issue in
-- six statements; here each step is one statement over the whole group, so the group pays one
-- round trip, one commit and one set of executor start-ups.
--
-- The caller passes one entry per issue: its member (a member may come more than once), request
-- id, content hash, one code, threshold, validity, source and time. All or nothing: when a request
-- id of the group issued a coupon before (a retry), the template is no longer active at p_version,
-- a member's holding would pass p_limit, a code is taken or the stock cannot cover the whole group,
-- it raises MC005 having written nothing, and the caller issues each alone with tasks.issue_coupon,
-- whose answers say which of them is refused and why. A request id met twice in the group, or taken
-- meanwhile by a concurrent call, raises unique_violation and is handled the same way.
--
-- The holdings are locked in member order, so two groups never wait on each other in a cycle; the
-- stock is taken once for the group (decision 140: a transaction that takes twice from one
-- allowance can deadlock). Answers the coupons written, one row per entry, in no particular order.
CREATE FUNCTION issue_coupons(
    p_tenant text, p_template text, p_version integer, p_limit integer, p_stock text,
    p_discount_kind smallint, p_amount bigint, p_percent integer, p_max_discount bigint,
    p_categories text[], p_skus text[],
    p_members text[], p_request_ids text[], p_hashes text[], p_codes text[], p_thresholds bigint[],
    p_valid_froms timestamptz[], p_valid_untils timestamptz[], p_campaigns text[], p_arms text[],
    p_issue_times timestamptz[]
) RETURNS SETOF coupons
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    v_count integer := cardinality(p_members);
    v_written integer;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    PERFORM FROM coupons WHERE tenant_id = p_tenant AND request_id = ANY (p_request_ids) LIMIT 1;
    IF FOUND THEN
        RAISE SQLSTATE 'MC005';
    END IF;
    PERFORM FROM coupon_templates
    WHERE tenant_id = p_tenant AND template_id = p_template AND state = 1 AND current_version = p_version
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'MC005';
    END IF;
    INSERT INTO coupon_holdings AS h (tenant_id, template_id, member_id, held)
    SELECT p_tenant, p_template, w.member, w.n
    FROM (SELECT m AS member, count(*)::integer AS n FROM unnest(p_members) AS m GROUP BY m) AS w
    WHERE w.n <= p_limit
    ORDER BY w.member
    ON CONFLICT (tenant_id, template_id, member_id) DO UPDATE SET held = h.held + excluded.held
    WHERE h.held + excluded.held <= p_limit;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    IF v_written <> (SELECT count(DISTINCT m) FROM unnest(p_members) AS m) THEN
        RAISE SQLSTATE 'MC005';
    END IF;
    RETURN QUERY
    INSERT INTO coupons (tenant_id, code, template_id, template_version, member_id, discount_kind,
                         amount_minor, percent, max_discount_minor, threshold_minor, categories, skus,
                         valid_from, valid_until, source_campaign, source_arm, request_id, content_hash,
                         issue_time)
    SELECT p_tenant, u.code, p_template, p_version, u.member, p_discount_kind, p_amount, p_percent,
           p_max_discount, u.threshold, p_categories, p_skus, u.valid_from, u.valid_until, u.campaign, u.arm,
           u.request_id, u.hash, u.issue_time
    FROM unnest(p_members, p_request_ids, p_hashes, p_codes, p_thresholds, p_valid_froms, p_valid_untils,
                p_campaigns, p_arms, p_issue_times)
         AS u(member, request_id, hash, code, threshold, valid_from, valid_until, campaign, arm, issue_time)
    ON CONFLICT (tenant_id, code) DO NOTHING
    RETURNING *;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    IF v_written <> v_count THEN
        RAISE SQLSTATE 'MC005';
    END IF;
    IF NOT take_allowance(p_stock, v_count) THEN
        RAISE SQLSTATE 'MC005';
    END IF;
END
$$;
