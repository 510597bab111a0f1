-- An earning in one round trip: lock (or create) the member's account, return the first result of a
-- repeated request id, refuse (no row) an order already reversed, else write the entry and its lot.
-- The same steps ran as four statements from Python; as one call EarnPoints needs one round trip
-- (see docs/decisions.md). It is called as a single autocommitted statement and enters the tenant
-- itself, exactly as Database.transaction does (role memberops_app and memberops.tenant_id, both
-- local to the statement's transaction), so row-level security applies to everything it touches.
-- Each statement of a volatile PL/pgSQL function takes a fresh snapshot, so after waiting on the
-- account lock the request-id lookup sees what the previous holder committed.

CREATE FUNCTION add_earning(
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
    RETURN NEXT e;
END
$$;
