-- The points ledger: one account row per member (the lock every write of that member takes first),
-- append-only entries, and lots (the points of one earning, with what is left of them and when
-- they become available and expire). Balances are sums over lots; nothing stores a balance.

CREATE TABLE accounts (
    tenant_id   text        NOT NULL,
    member_id   text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id)
);

CREATE TABLE ledger_entries (
    tenant_id      text        NOT NULL,
    entry_id       bigint      GENERATED ALWAYS AS IDENTITY,
    member_id      text        NOT NULL,
    delta          bigint      NOT NULL,
    -- memberops.tasks.v1.Reason: 1 task, 2 order, 3 operator, 4 redemption, 5 expiry, 6 reversal.
    reason         smallint    NOT NULL CHECK (reason BETWEEN 1 AND 6),
    reference      text        NOT NULL DEFAULT '',
    operator       text        NOT NULL DEFAULT '',
    note           text        NOT NULL DEFAULT '',
    -- The caller's id ('' for entries the server writes itself) and a hash of what it asked for.
    request_id     text        NOT NULL DEFAULT '',
    content_hash   text        NOT NULL DEFAULT '',
    shortfall      bigint      NOT NULL DEFAULT 0 CHECK (shortfall >= 0),
    available_time timestamptz,
    expire_time    timestamptz,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entry_id),
    FOREIGN KEY (tenant_id, member_id) REFERENCES accounts (tenant_id, member_id)
);

-- A retried write finds its first result; a request id is spent once per tenant.
CREATE UNIQUE INDEX ledger_entries_request ON ledger_entries (tenant_id, request_id) WHERE request_id <> '';
-- An order is reversed at most once per member.
CREATE UNIQUE INDEX ledger_entries_reversal ON ledger_entries (tenant_id, member_id, reference) WHERE reason = 6;
CREATE INDEX ledger_entries_member ON ledger_entries (tenant_id, member_id, entry_id);

CREATE TABLE lots (
    tenant_id      text        NOT NULL,
    lot_id         bigint      GENERATED ALWAYS AS IDENTITY,
    member_id      text        NOT NULL,
    -- The earning (or positive adjustment) that created the lot.
    entry_id       bigint      NOT NULL,
    -- Set for order earnings, so a reversal finds them.
    order_id       text,
    amount         bigint      NOT NULL CHECK (amount > 0),
    remaining      bigint      NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    available_time timestamptz NOT NULL,
    expire_time    timestamptz,
    PRIMARY KEY (tenant_id, lot_id),
    FOREIGN KEY (tenant_id, entry_id) REFERENCES ledger_entries (tenant_id, entry_id)
);

CREATE INDEX lots_open ON lots (tenant_id, member_id, expire_time) WHERE remaining > 0;
CREATE INDEX lots_expiring ON lots (tenant_id, expire_time) WHERE remaining > 0 AND expire_time IS NOT NULL;
CREATE INDEX lots_order ON lots (tenant_id, member_id, order_id) WHERE order_id IS NOT NULL;

-- Which lots a spend or a negative adjustment drew from, and how much from each.
CREATE TABLE lot_draws (
    tenant_id text   NOT NULL,
    entry_id  bigint NOT NULL,
    lot_id    bigint NOT NULL,
    amount    bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (tenant_id, entry_id, lot_id),
    FOREIGN KEY (tenant_id, entry_id) REFERENCES ledger_entries (tenant_id, entry_id),
    FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, lot_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'ledger_entries', 'lots', 'lot_draws'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
