-- The current tags of a dimension held by given members: what a recompute of a member list and a
-- real-time refresh compare their evaluation with. No index had (dimension, member) as a prefix, so
-- PostgreSQL read every tag of the members (31 a member on the bench data) to keep one: 1.1 s for
-- the 36k members a day's incremental recompute of one dimension evaluates, 0.05-0.13 s with this.
CREATE INDEX member_tags_held ON member_tags (tenant_id, dimension, member_id) WHERE valid_to IS NULL;
