-- Reach data on members; orders, refunds and behaviour events; the feed (transactional outbox).

ALTER TABLE members
    ADD COLUMN nickname           text       NOT NULL DEFAULT '',
    ADD COLUMN level              text       NOT NULL DEFAULT '',
    ADD COLUMN phone              text       NOT NULL DEFAULT '',
    ADD COLUMN email              text       NOT NULL DEFAULT '',
    ADD COLUMN preferred_channel  smallint   NOT NULL DEFAULT 0,
    ADD COLUMN opted_out_channels smallint[] NOT NULL DEFAULT '{}',
    ADD COLUMN time_zone          text       NOT NULL DEFAULT '';

CREATE TABLE orders (
    tenant_id             text        NOT NULL,
    order_id              text        NOT NULL,
    member_id             text        NOT NULL,
    paid_time             timestamptz NOT NULL,
    amount_minor          bigint      NOT NULL CHECK (amount_minor >= 0),
    store                 text        NOT NULL DEFAULT '',
    payment_method        text        NOT NULL DEFAULT '',
    refunded_amount_minor bigint      NOT NULL DEFAULT 0,
    -- sha256 of the order as first recorded: a retry must match it, else ALREADY_EXISTS.
    content_hash          text        NOT NULL,
    record_time           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, order_id),
    FOREIGN KEY (tenant_id, member_id) REFERENCES members (tenant_id, member_id),
    CHECK (refunded_amount_minor BETWEEN 0 AND amount_minor)
);
CREATE INDEX orders_member_paid ON orders (tenant_id, member_id, paid_time);

-- member_id and paid_time repeat the order's so category/brand aggregates need no join.
CREATE TABLE order_lines (
    tenant_id         text        NOT NULL,
    order_id          text        NOT NULL,
    line_id           text        NOT NULL,
    member_id         text        NOT NULL,
    paid_time         timestamptz NOT NULL,
    sku               text        NOT NULL DEFAULT '',
    category          text        NOT NULL DEFAULT '',
    brand             text        NOT NULL DEFAULT '',
    quantity          integer     NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint      NOT NULL CHECK (unit_price_minor >= 0),
    refunded_quantity integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, order_id, line_id),
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders (tenant_id, order_id),
    CHECK (refunded_quantity BETWEEN 0 AND quantity)
);
CREATE INDEX order_lines_member_paid ON order_lines (tenant_id, member_id, paid_time);

CREATE TABLE refunds (
    tenant_id    text        NOT NULL,
    refund_id    text        NOT NULL,
    order_id     text        NOT NULL,
    member_id    text        NOT NULL,
    refund_time  timestamptz NOT NULL,
    amount_minor bigint      NOT NULL CHECK (amount_minor >= 0),
    content_hash text        NOT NULL,
    record_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, refund_id),
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders (tenant_id, order_id)
);
CREATE INDEX refunds_order ON refunds (tenant_id, order_id);

CREATE TABLE refund_lines (
    tenant_id text    NOT NULL,
    refund_id text    NOT NULL,
    line_id   text    NOT NULL,
    quantity  integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (tenant_id, refund_id, line_id),
    FOREIGN KEY (tenant_id, refund_id) REFERENCES refunds (tenant_id, refund_id)
);

CREATE TABLE events (
    tenant_id   text        NOT NULL,
    event_id    text        NOT NULL,
    member_id   text        NOT NULL,
    kind        smallint    NOT NULL,
    occur_time  timestamptz NOT NULL,
    sku         text        NOT NULL DEFAULT '',
    category    text        NOT NULL DEFAULT '',
    brand       text        NOT NULL DEFAULT '',
    query       text        NOT NULL DEFAULT '',
    channel     text        NOT NULL DEFAULT '',
    record_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX events_member_time ON events (tenant_id, member_id, occur_time);

-- The feed. Entries are ordered by (txid, seq): txid is the writing transaction's id, so a reader
-- that returns only entries whose txid is older than every transaction still running never skips
-- an entry that commits later with a smaller sequence number.
CREATE TABLE feed (
    tenant_id   text        NOT NULL,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    kind        smallint    NOT NULL,
    member_id   text        NOT NULL,
    subject_id  text        NOT NULL DEFAULT '',
    payload     jsonb       NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, txid, seq)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['orders', 'order_lines', 'refunds', 'refund_lines', 'events', 'feed'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
