-- Sign-ins of one task and day in one statement for a group of members (services/tasks/tasks/
-- signin.py batches the SignIn calls that arrive while earlier ones run). tasks.sign_in (0019) does
-- one member's in about fifteen statements, and their executor start-ups, not waits, were most of
-- PostgreSQL's 1.0-1.1 ms of CPU per sign-in: here each step is one statement over the whole group,
-- which halved PostgreSQL's time per sign-in at groups of eight (decision 154).
--
-- The caller passes distinct members and distinct request ids, one `now` and expiry per member.
-- The accounts are locked in member order (two groups never wait on each other in a cycle), the
-- outcomes decided exactly as tasks.sign_in decides them ('asked', 'signed', 'daily_limit',
-- 'total_limit', 'paid'), and the sum of the points paid taken from the task's budget ONCE
-- (decision 140: a transaction that takes twice from one allowance can deadlock). When the budget
-- cannot pay the whole group, or the task is no longer active at p_version, it raises MS003 having
-- written nothing, and the caller signs each member in alone with tasks.sign_in, whose answers say
-- which of them the budget or the version refuses. A request id taken meanwhile by a concurrent
-- call (a unique violation) is handled the same way by the caller.
--
-- Answers one row per member, in the order given: the member, the outcome, the points paid
-- ('paid'), and for 'asked' and 'paid' the sign-in row and its completion.
CREATE FUNCTION sign_in_batch(
    p_tenant text, p_task text, p_version integer, p_day date,
    p_members text[], p_request_ids text[], p_hashes text[], p_nows timestamptz[], p_expires timestamptz[],
    p_rewards bigint[], p_claim boolean, p_per_day integer, p_total integer,
    p_cycle_start date, p_cycle_end date,
    p_milestone_days integer[], p_milestone_badges text[], p_task_badge text,
    OUT member_id text, OUT outcome text, OUT points bigint, OUT s sign_ins, OUT c completions
) RETURNS SETOF record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
#variable_conflict use_column
DECLARE
    v_outcomes text[];
    v_points bigint[];
    v_pay_members text[];
    v_pay_requests text[];
    v_pay_hashes text[];
    v_pay_streaks integer[];
    v_pay_points bigint[];
    v_pay_nows timestamptz[];
    v_pay_expires timestamptz[];
    v_sum bigint;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    INSERT INTO accounts (tenant_id, member_id)
    SELECT p_tenant, m FROM unnest(p_members) AS m ORDER BY m
    ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id;

    WITH m AS (
        SELECT u.member, u.req, u.hash, u.now, u.expire, u.ord
        FROM unnest(p_members, p_request_ids, p_hashes, p_nows, p_expires)
             WITH ORDINALITY AS u(member, req, hash, now, expire, ord)
    ), d AS (
        SELECT m.*,
               CASE WHEN EXISTS (SELECT 1 FROM sign_ins x WHERE x.tenant_id = p_tenant AND x.request_id = m.req)
                        THEN 'asked'
                    WHEN EXISTS (SELECT 1 FROM sign_ins x
                                 WHERE x.tenant_id = p_tenant AND x.task_id = p_task AND x.member_id = m.member
                                   AND x.day = p_day)
                        THEN 'signed'
                    WHEN p_per_day > 0 AND lim.today >= p_per_day THEN 'daily_limit'
                    WHEN p_total > 0 AND lim.total >= p_total THEN 'total_limit'
                    ELSE 'paid' END AS outcome,
               coalesce(y.streak, 0) + 1 AS streak
        FROM m
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE k.day = p_day) AS today,
                   count(*) FILTER (WHERE k.day >= p_cycle_start AND k.day < p_cycle_end) AS total
            FROM completions k
            WHERE (p_per_day > 0 OR p_total > 0)
              AND k.tenant_id = p_tenant AND k.task_id = p_task AND k.member_id = m.member AND k.state <> 3
        ) lim ON true
        -- LIMIT 1 keeps each lookup a probe of the member's key: pulled up into a join, a generic
        -- plan hashed every sign-in of the task (4.6 ms a group at 50,000 rows).
        LEFT JOIN LATERAL (
            SELECT y.streak FROM sign_ins y
            WHERE y.tenant_id = p_tenant AND y.task_id = p_task AND y.member_id = m.member AND y.day = p_day - 1
            LIMIT 1
        ) y ON true
    )
    SELECT array_agg(d.outcome ORDER BY d.ord),
           array_agg(CASE WHEN d.outcome = 'paid' THEN p_rewards[least(d.streak, cardinality(p_rewards))] END
                     ORDER BY d.ord),
           array_agg(d.member ORDER BY d.member) FILTER (WHERE d.outcome = 'paid'),
           array_agg(d.req ORDER BY d.member) FILTER (WHERE d.outcome = 'paid'),
           array_agg(d.hash ORDER BY d.member) FILTER (WHERE d.outcome = 'paid'),
           array_agg(d.streak ORDER BY d.member) FILTER (WHERE d.outcome = 'paid'),
           array_agg(p_rewards[least(d.streak, cardinality(p_rewards))] ORDER BY d.member)
               FILTER (WHERE d.outcome = 'paid'),
           array_agg(d.now ORDER BY d.member) FILTER (WHERE d.outcome = 'paid'),
           array_agg(d.expire ORDER BY d.member) FILTER (WHERE d.outcome = 'paid')
    INTO v_outcomes, v_points, v_pay_members, v_pay_requests, v_pay_hashes, v_pay_streaks, v_pay_points,
         v_pay_nows, v_pay_expires
    FROM d;

    IF v_pay_members IS NOT NULL THEN
        WITH pay AS (
            SELECT u.member, u.req, u.hash, u.streak, u.points, u.now, u.expire,
                   nextval(pg_get_serial_sequence('tasks.completions', 'completion_id')) AS completion_id,
                   format('sign-in %s day %s', to_char(p_day, 'YYYY-MM-DD'), u.streak) AS source
            FROM unnest(v_pay_members, v_pay_requests, v_pay_hashes, v_pay_streaks, v_pay_points, v_pay_nows,
                        v_pay_expires) AS u(member, req, hash, streak, points, now, expire)
        ), si AS (
            INSERT INTO sign_ins (tenant_id, task_id, member_id, day, streak, makeup, completion_id, request_id,
                                  content_hash)
            SELECT p_tenant, p_task, pay.member, p_day, pay.streak, false, pay.completion_id, pay.req, pay.hash
            FROM pay
        ), le AS (
            INSERT INTO ledger_entries (tenant_id, member_id, delta, reason, reference, operator, note, request_id,
                                        content_hash, available_time, expire_time)
            SELECT p_tenant, pay.member, pay.points, 1, p_task, '',
                   format('completion %s: %s', pay.completion_id, pay.source), '', '', pay.now, pay.expire
            FROM pay WHERE NOT p_claim
            RETURNING entry_id, ledger_entries.member_id, delta, available_time, expire_time
        ), lo AS (
            INSERT INTO lots (tenant_id, member_id, entry_id, order_id, amount, remaining, available_time,
                              expire_time)
            SELECT p_tenant, le.member_id, le.entry_id, NULL, le.delta, le.delta, le.available_time,
                   le.expire_time
            FROM le
        )
        INSERT INTO completions (tenant_id, completion_id, task_id, member_id, day, points, state, source,
                                 entry_id)
        OVERRIDING SYSTEM VALUE
        SELECT p_tenant, pay.completion_id, p_task, pay.member, p_day, pay.points,
               CASE WHEN p_claim THEN 2 ELSE 1 END, pay.source, le.entry_id
        FROM pay LEFT JOIN le ON le.member_id = pay.member;
        -- As add_earning does after an earning for a task, but raise_level (which locks the
        -- member's level and decides) runs only for the members whose growth now reaches a tier
        -- above the one they hold: one statement finds them for the group, where raise_level's five
        -- statements per member were a fifth of a sign-in's time. Without a policy, nobody.
        IF NOT p_claim THEN
            PERFORM raise_level(p_tenant, u.member)
            FROM unnest(v_pay_members) AS u(member)
            JOIN level_policies p ON p.tenant_id = p_tenant
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(e.delta - e.shortfall), 0) AS growth FROM ledger_entries e
                WHERE e.tenant_id = p_tenant AND e.member_id = u.member AND e.reason IN (1, 2, 6, 7)
                  AND e.create_time > now() - make_interval(days => p.window_days)
            ) g
            CROSS JOIN LATERAL (
                SELECT max(q.rank) AS rank FROM level_tiers q WHERE q.tenant_id = p_tenant AND q.min_growth <= g.growth
            ) q
            LEFT JOIN LATERAL (
                SELECT t.rank FROM member_levels l
                JOIN level_tiers t ON t.tenant_id = l.tenant_id AND t.code = l.code
                WHERE l.tenant_id = p_tenant AND l.member_id = u.member
                LIMIT 1
            ) h ON true
            WHERE q.rank > coalesce(h.rank, 0)
            ORDER BY u.member;
        END IF;
        IF p_task_badge IS NOT NULL THEN
            INSERT INTO member_badges (tenant_id, member_id, badge_id, source, award_time)
            SELECT p_tenant, u.member, p_task_badge, 'task ' || p_task, u.now
            FROM unnest(v_pay_members, v_pay_nows) AS u(member, now)
            ORDER BY u.member
            ON CONFLICT (tenant_id, member_id, badge_id) DO NOTHING;
        END IF;
        IF cardinality(p_milestone_days) > 0 THEN
            INSERT INTO member_badges (tenant_id, member_id, badge_id, source, award_time)
            SELECT p_tenant, u.member, ms.badge, format('streak %s %s days', p_task, ms.days), u.now
            FROM unnest(v_pay_members, v_pay_streaks, v_pay_nows) AS u(member, streak, now)
            JOIN unnest(p_milestone_days, p_milestone_badges) WITH ORDINALITY AS ms(days, badge, n)
              ON ms.days <= u.streak
            ORDER BY u.member, ms.n
            ON CONFLICT (tenant_id, member_id, badge_id) DO NOTHING;
        END IF;
        -- The budget last (the service's lock order, services/tasks/README.md), then the task's
        -- state and version in a statement of their own, as tasks.sign_in does.
        SELECT sum(x) INTO v_sum FROM unnest(v_pay_points) AS x;
        IF NOT take_allowance('task:' || p_task, v_sum) THEN
            RAISE SQLSTATE 'MS003' USING MESSAGE = 'budget';
        END IF;
        PERFORM 1 FROM task_definitions
        WHERE tenant_id = p_tenant AND task_id = p_task AND state = 1 AND current_version = p_version;
        IF NOT FOUND THEN
            RAISE SQLSTATE 'MS003' USING MESSAGE = 'stale';
        END IF;
    END IF;

    RETURN QUERY
    SELECT u.member, u.outcome, u.points, x.row, k.row
    FROM unnest(p_members, p_request_ids, v_outcomes, v_points) WITH ORDINALITY AS u(member, req, outcome, points, ord)
    LEFT JOIN LATERAL (
        SELECT x AS row FROM sign_ins x
        WHERE u.outcome IN ('asked', 'paid') AND x.tenant_id = p_tenant AND x.request_id = u.req LIMIT 1
    ) x ON true
    LEFT JOIN LATERAL (
        SELECT k AS row FROM completions k
        WHERE k.tenant_id = p_tenant AND k.completion_id = (x.row).completion_id LIMIT 1
    ) k ON true
    ORDER BY u.ord;
END
$$;
