-- Writing tags costs what each row is checked against, and a first recompute writes a row per
-- member per dimension. Measured on 970,062 new tags of one dimension: 63.6 s, of which the two
-- foreign-key triggers took 28.2 s and the insert itself (five indexes) 28.4 s.
--
-- The foreign keys go: tags are written only by compiled statements that take member ids from
-- `members` and dimensions from the catalog, and neither members nor definitions are ever deleted.
ALTER TABLE member_tags DROP CONSTRAINT member_tags_tenant_id_member_id_fkey;
ALTER TABLE member_tags DROP CONSTRAINT member_tags_tenant_id_dimension_fkey;

-- One index serves both "a member holds a value at most once" and "who holds this value" (audiences,
-- stats, the recompute's read of current holdings): value before member, so a (dimension, value)
-- lookup is a prefix and a count per value can be an index-only scan.
CREATE UNIQUE INDEX member_tags_holders ON member_tags (tenant_id, dimension, value, member_id)
    WHERE valid_to IS NULL;
DROP INDEX member_tags_current;
DROP INDEX member_tags_value;
