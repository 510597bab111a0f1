-- A day's sign-in in one round trip (services/tasks/tasks/signin.py). The same steps ran as eight
-- round trips from Python (BEGIN, the account lock, the request and recent days read, the sign-in
-- row, the earning, the budget take, the completion, COMMIT), and the tasks service, at 100% of a
-- core, spent most of each SignIn sending and awaiting them. Called as one autocommitted
-- statement, as EarnPoints calls add_earning, it enters the tenant exactly as
-- Database.transaction (and add_earning) does, so row-level security applies to all it touches.
-- Each statement takes a fresh snapshot, so after waiting on the account lock the reads see what
-- the previous holder committed.
--
-- Answers one row: `outcome` 'asked' (the request id was used before: that sign-in and its
-- completion, if any; the caller compares the content hash), 'signed' (the member signed in on the
-- day under another request), 'daily_limit' or 'total_limit' (the task's limits), 'budget' (the
-- budget cannot pay `points`) or 'stale' (the task is no longer active at p_version), all having
-- written nothing; or 'paid' (the sign-in, its completion and, unless the task wants it claimed,
-- its earning). The writes run in a block of their own, rolled back when the budget or the version
-- refuses them, so a refusal is an answer like the others, not an error. It takes from the task's
-- budget once: a transaction that takes twice from one allowance can deadlock (0014), so several
-- sign-ins must not share a transaction.
CREATE FUNCTION sign_in(
    p_tenant text, p_task text, p_version integer, p_member text, p_day date, p_request_id text,
    p_hash text, p_rewards bigint[], p_claim boolean, p_per_day integer, p_total integer,
    p_cycle_start date, p_cycle_end date, p_expire timestamptz, p_now timestamptz,
    p_milestone_days integer[], p_milestone_badges text[], p_task_badge text,
    OUT outcome text, OUT points bigint, OUT s sign_ins, OUT c completions
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    v_streak integer;
    v_source text;
    v_entry bigint;
    v_today bigint;
    v_total bigint;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    INSERT INTO accounts (tenant_id, member_id) VALUES (p_tenant, p_member)
    ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id;

    SELECT * INTO s FROM sign_ins WHERE tenant_id = p_tenant AND request_id = p_request_id;
    IF FOUND THEN
        outcome := 'asked';
        IF s.completion_id IS NOT NULL THEN
            SELECT * INTO c FROM completions WHERE tenant_id = p_tenant AND completion_id = s.completion_id;
        END IF;
        RETURN;
    END IF;

    IF EXISTS (SELECT 1 FROM sign_ins
               WHERE tenant_id = p_tenant AND task_id = p_task AND member_id = p_member AND day = p_day) THEN
        outcome := 'signed';
        RETURN;
    END IF;
    IF p_per_day > 0 OR p_total > 0 THEN
        SELECT count(*) FILTER (WHERE day = p_day),
               count(*) FILTER (WHERE day >= p_cycle_start AND day < p_cycle_end)
        INTO v_today, v_total
        FROM completions
        WHERE tenant_id = p_tenant AND task_id = p_task AND member_id = p_member AND state <> 3;
        IF p_per_day > 0 AND v_today >= p_per_day THEN
            outcome := 'daily_limit';
            RETURN;
        END IF;
        IF p_total > 0 AND v_total >= p_total THEN
            outcome := 'total_limit';
            RETURN;
        END IF;
    END IF;

    SELECT coalesce(max(streak), 0) + 1 INTO v_streak FROM sign_ins
    WHERE tenant_id = p_tenant AND task_id = p_task AND member_id = p_member AND day = p_day - 1;
    points := p_rewards[least(v_streak, cardinality(p_rewards))];
    v_source := format('sign-in %s day %s', to_char(p_day, 'YYYY-MM-DD'), v_streak);

    BEGIN
        -- The sign-in row names the completion written below (the key is checked at commit, 0008).
        INSERT INTO sign_ins (tenant_id, task_id, member_id, day, streak, makeup, completion_id, request_id,
                              content_hash)
        VALUES (p_tenant, p_task, p_member, p_day, v_streak, false,
                nextval(pg_get_serial_sequence('tasks.completions', 'completion_id')), p_request_id, p_hash)
        RETURNING * INTO s;
        IF NOT p_claim THEN
            SELECT e.entry_id INTO v_entry
            FROM add_earning(p_tenant, p_member, points, 1::smallint, p_task, '',
                             format('completion %s: %s', s.completion_id, v_source), '', '', p_now, p_expire,
                             NULL) e;
        END IF;
        -- The budget, then the task's state and version in a statement of their own: an update or a
        -- retirement holds every shard before it commits, so a take that waited for one sees it.
        IF NOT take_allowance('task:' || p_task, points) THEN
            RAISE SQLSTATE 'MS001';
        END IF;
        INSERT INTO completions (tenant_id, completion_id, task_id, member_id, day, points, state, source,
                                 entry_id)
        OVERRIDING SYSTEM VALUE
        SELECT p_tenant, s.completion_id, task_id, p_member, p_day, points,
               CASE WHEN p_claim THEN 2 ELSE 1 END, v_source, v_entry
        FROM task_definitions
        WHERE tenant_id = p_tenant AND task_id = p_task AND state = 1 AND current_version = p_version
        RETURNING * INTO c;
        IF NOT FOUND THEN
            RAISE SQLSTATE 'MS001';
        END IF;
        IF p_task_badge IS NOT NULL THEN
            INSERT INTO member_badges (tenant_id, member_id, badge_id, source, award_time)
            VALUES (p_tenant, p_member, p_task_badge, 'task ' || p_task, p_now)
            ON CONFLICT (tenant_id, member_id, badge_id) DO NOTHING;
        END IF;
        INSERT INTO member_badges (tenant_id, member_id, badge_id, source, award_time)
        SELECT p_tenant, p_member, m.badge, format('streak %s %s days', p_task, m.days), p_now
        FROM unnest(p_milestone_days, p_milestone_badges) WITH ORDINALITY AS m(days, badge, n)
        WHERE m.days <= v_streak
        ORDER BY m.n
        ON CONFLICT (tenant_id, member_id, badge_id) DO NOTHING;
        outcome := 'paid';
    EXCEPTION WHEN SQLSTATE 'MS001' THEN
        -- Refused: the block's writes are undone (variables are not, so clear them).
        s := NULL;
        c := NULL;
        outcome := CASE WHEN EXISTS (
                            SELECT 1 FROM task_definitions
                            WHERE tenant_id = p_tenant AND task_id = p_task AND state = 1
                              AND current_version = p_version)
                        THEN 'budget' ELSE 'stale' END;
    END;
END
$$;
