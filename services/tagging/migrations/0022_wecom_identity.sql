-- A member's WeCom identity (issue 24): the member as a WeCom external contact (`external_userid`)
-- and the staff member (`userid`) who owns the relationship, the sender of WeCom messages and the
-- owner of the customer's tags. '' when the member has none; both cleared by an erasure (the
-- pseudonym's row keeps neither).
ALTER TABLE members
    ADD COLUMN wecom_external_userid text NOT NULL DEFAULT '',
    ADD COLUMN wecom_staff_userid text NOT NULL DEFAULT '';

-- One member per external contact in a tenant. An exclusion constraint with `=` is a unique index
-- that can be checked at the end of the statement (DEFERRABLE INITIALLY IMMEDIATE) rather than row
-- by row: an import that moves ids between its members (A takes B's, B takes A's) passes, as the
-- rows end unique. It is no ON CONFLICT arbiter (members_pkey is). Its index also serves
-- SearchMembers' exact match (a plain column comparison, usable under row-level security).
ALTER TABLE members ADD CONSTRAINT members_wecom_external_userid
    EXCLUDE USING btree (tenant_id WITH =, wecom_external_userid WITH =)
    WHERE (wecom_external_userid <> '') DEFERRABLE INITIALLY IMMEDIATE;
