-- Dense member numbers (issue 25): audience keeps one compressed bitmap (pyroaring, 32-bit unsigned)
-- per tag value and per profile bucket over these numbers, so a member needs a small integer of its
-- own. One global sequence across tenants: no per-tenant counter row for every registration to queue
-- on, and a tenant's bitmaps stay compact anyway (roaring compresses runs and sparse chunks). Gaps
-- (rolled back inserts) are harmless. Writers never name the column: an insert takes the default, an
-- upsert of an existing member proposes its own number (member_store), which the update keeps.
CREATE SEQUENCE member_numbers AS bigint MINVALUE 1 MAXVALUE 4294967295 NO CYCLE;

-- A volatile default fills every existing row while the table is rewritten: one pass, seconds for
-- the 1M-member bench (an UPDATE would write every row a second time).
ALTER TABLE members
    ADD COLUMN member_no bigint NOT NULL DEFAULT nextval('member_numbers')
        CHECK (member_no BETWEEN 1 AND 4294967295);

ALTER SEQUENCE member_numbers OWNED BY members.member_no;

-- Unique across tenants. An erasure moves the number to the member's pseudonym (erasure_store).
ALTER TABLE members ADD CONSTRAINT members_member_no UNIQUE (member_no);

-- Published: audience's bitmaps read each member's number (appended: a view's columns only grow).
CREATE OR REPLACE VIEW tagging_read.members WITH (security_invoker = true) AS
SELECT tenant_id, member_id, gender, birthday, city, city_tier, register_time, register_channel,
       level, attributes, create_time, update_time, member_no
FROM tagging.members;
