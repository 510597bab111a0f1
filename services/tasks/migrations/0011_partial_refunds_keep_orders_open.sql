-- Only a whole-order reversal (ReverseOrderPoints, empty note) closes an order to more points; a
-- refund's reversal ('refund <id>') takes its share and leaves the order open, since each later
-- refund claims its cumulative share of all the order earned.
CREATE OR REPLACE FUNCTION add_earning(
    p_tenant text, p_member text, p_delta bigint, p_reason smallint, p_reference text, p_operator text,
    p_note text, p_request_id text, p_hash text, p_available timestamptz, p_expire timestamptz,
    p_order text
) RETURNS SETOF ledger_entries
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    e ledger_entries;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    INSERT INTO accounts (tenant_id, member_id) VALUES (p_tenant, p_member)
    ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id;
    IF p_request_id <> '' THEN
        SELECT * INTO e FROM ledger_entries
        WHERE tenant_id = p_tenant AND request_id = p_request_id AND request_id <> '';
        IF FOUND THEN
            RETURN NEXT e;
            RETURN;
        END IF;
    END IF;
    IF p_order IS NOT NULL AND EXISTS (
        SELECT 1 FROM ledger_entries
        WHERE tenant_id = p_tenant AND member_id = p_member AND reference = p_order AND reason = 6
          AND note = ''
    ) THEN
        RETURN;
    END IF;
    INSERT INTO ledger_entries (tenant_id, member_id, delta, reason, reference, operator, note, request_id,
                                content_hash, available_time, expire_time)
    VALUES (p_tenant, p_member, p_delta, p_reason, p_reference, p_operator, p_note, p_request_id, p_hash,
            p_available, p_expire)
    RETURNING * INTO e;
    INSERT INTO lots (tenant_id, member_id, entry_id, order_id, amount, remaining, available_time, expire_time)
    VALUES (p_tenant, p_member, e.entry_id, p_order, p_delta, p_delta, p_available, p_expire);
    IF p_reason IN (1, 2) THEN
        PERFORM raise_level(p_tenant, p_member);
    END IF;
    RETURN NEXT e;
END
$$;
