-- What each dimension's last full recompute saw (issue 19 review): its as_of and its statement's
-- snapshot. The next recompute finds the facts recorded since (feed entries the snapshot did not
-- see) and evaluates their members at the previous as_of with every fact known now: a change
-- already true then was caused by those facts (history, dated by their own time); any other change
-- was caused by time, at the new as_of. The snapshot, not a clock reading, is exact: a fact whose
-- transaction began before the recompute and committed after it is still unseen.
CREATE TABLE recompute_marks (
    tenant_id text        NOT NULL,
    dimension text        NOT NULL,
    as_of     timestamptz NOT NULL,
    seen      pg_snapshot NOT NULL,
    PRIMARY KEY (tenant_id, dimension)
);

ALTER TABLE recompute_marks ENABLE ROW LEVEL SECURITY;
ALTER TABLE recompute_marks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recompute_marks
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- The feed's fact entries (everything but tag changes) by transaction: the facts since a snapshot
-- are one short range, not every tag change a recompute wrote since.
CREATE INDEX feed_facts ON feed (tenant_id, txid) WHERE kind <> 5;
