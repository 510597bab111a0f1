-- The operations console's reads (issue 22): member search, a member's orders, daily KPIs.
--
-- Requests run under forced row-level security, and PostgreSQL uses a condition of the query as an
-- index condition only when its functions are leakproof (else it could run on rows the policy
-- hides). lower(), char_length(), coalesce() and LIKE are not; comparisons of plain columns are.
-- So the search and the daily counts compare stored columns, computed by PostgreSQL from the row:
-- a trigram index (pg_trgm) on lower(nickname) would never be used by a request (checked with
-- EXPLAIN), and neither would an expression index.
ALTER TABLE members
    ADD COLUMN nickname_folded text GENERATED ALWAYS AS (lower(nickname)) STORED,
    ADD COLUMN nickname_length integer GENERATED ALWAYS AS (char_length(nickname)) STORED,
    -- When the member joined: registered then, or first recorded then when that is unknown.
    ADD COLUMN join_time timestamptz GENERATED ALWAYS AS (coalesce(register_time, create_time)) STORED;

-- Nickname search, "contains the text, shortest first": walked in (length, id) order from the
-- text's own length on (a shorter nickname cannot contain it), the folded nickname read from the
-- index alone, until a page is full. A text most nicknames contain fills a page at once; one that
-- none contains reads the tenant's entries (about 100 ms for 1M members).
CREATE INDEX members_nickname_walk ON members (tenant_id, nickname_length, member_id) INCLUDE (nickname_folded);
-- Search by phone (E.164 as stored); members without one are left out.
CREATE INDEX members_phone ON members (tenant_id, phone) WHERE phone <> '';
-- New members per day.
CREATE INDEX members_joined ON members (tenant_id, join_time);

-- Orders and refunds per day of a date range, from the index alone. (Whether a buyer bought before
-- uses orders_member_paid; active members' events use events_kind_time with every kind listed.)
CREATE INDEX orders_paid ON orders (tenant_id, paid_time) INCLUDE (member_id, amount_minor);
CREATE INDEX refunds_time ON refunds (tenant_id, refund_time) INCLUDE (amount_minor);
