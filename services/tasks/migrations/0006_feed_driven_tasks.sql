-- Tasks that learn from tagging's feed: the cursor over it, what the feed told about members
-- (registration, first order), invites waiting for their trigger, and the order lines each
-- purchase task counted (so a refund takes back exactly what its order added).

-- Reason 7: a task completion taken back (a refund undid the purchase it stood on). Like an order
-- reversal it counts against what was earned (leaderboards, growth value).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_reason_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_reason_check CHECK (reason BETWEEN 1 AND 7);
DROP INDEX ledger_entries_earned;
CREATE INDEX ledger_entries_earned ON ledger_entries (tenant_id, create_time)
    INCLUDE (member_id, delta) WHERE reason IN (1, 2, 6, 7);

-- Where the follower is in a feed (`tagging`): written in the same transaction as the effects of
-- the entries before it, so a crash neither loses nor repeats one.
CREATE TABLE feed_cursors (
    tenant_id   text        NOT NULL,
    source      text        NOT NULL,
    cursor      text        NOT NULL DEFAULT '',
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, source)
);

-- Members as the feed showed them: when tagging first recorded them and their first order.
-- An invite of a member tasks has not seen register yet has a row with both times empty; the row
-- is the lock an invite and the follower take on the invitee.
CREATE TABLE member_facts (
    tenant_id        text        NOT NULL,
    member_id        text        NOT NULL,
    register_time    timestamptz,
    first_order_time timestamptz,
    PRIMARY KEY (tenant_id, member_id)
);

-- One invite per invitee and tenant: a member is invited once.
CREATE TABLE invites (
    tenant_id             text        NOT NULL,
    invitee_member_id     text        NOT NULL,
    task_id               text        NOT NULL,
    inviter_member_id     text        NOT NULL,
    -- The task's calendar day the invite was recorded on (the inviter's daily cap).
    day                   date        NOT NULL,
    -- memberops.tasks.v1.InviteState: 1 pending, 2 completed, 3 unpaid.
    state                 smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2, 3)),
    inviter_completion_id bigint,
    invitee_completion_id bigint,
    request_id            text        NOT NULL,
    content_hash          text        NOT NULL,
    create_time           timestamptz NOT NULL DEFAULT now(),
    complete_time         timestamptz,
    PRIMARY KEY (tenant_id, invitee_member_id),
    CHECK (invitee_member_id <> inviter_member_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id),
    FOREIGN KEY (tenant_id, inviter_completion_id) REFERENCES completions (tenant_id, completion_id),
    FOREIGN KEY (tenant_id, invitee_completion_id) REFERENCES completions (tenant_id, completion_id)
);
CREATE UNIQUE INDEX invites_request ON invites (tenant_id, request_id);
CREATE INDEX invites_inviter ON invites (tenant_id, task_id, inviter_member_id, day);

-- An order a purchase task counted, and the refunds it has seen of it.
CREATE TABLE purchase_orders (
    tenant_id      text        NOT NULL,
    task_id        text        NOT NULL,
    order_id       text        NOT NULL,
    member_id      text        NOT NULL,
    paid_time      timestamptz NOT NULL,
    amount_minor   bigint      NOT NULL CHECK (amount_minor >= 0),
    refunded_minor bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    PRIMARY KEY (tenant_id, task_id, order_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id)
);
CREATE INDEX purchase_orders_order ON purchase_orders (tenant_id, order_id);

-- The order's lines that matched the task's filters.
CREATE TABLE purchase_lines (
    tenant_id        text    NOT NULL,
    task_id          text    NOT NULL,
    order_id         text    NOT NULL,
    line_id          text    NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    refunded         integer NOT NULL DEFAULT 0,
    unit_price_minor bigint  NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (tenant_id, task_id, order_id, line_id),
    FOREIGN KEY (tenant_id, task_id, order_id) REFERENCES purchase_orders (tenant_id, task_id, order_id),
    CHECK (refunded BETWEEN 0 AND quantity)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['feed_cursors', 'member_facts', 'invites', 'purchase_orders', 'purchase_lines'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
