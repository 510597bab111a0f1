-- Each member's own RFM figures as an RFM model's previous recompute found them (issue 25): the
-- latest counted order, and the counted orders within the model's window and what was kept of
-- them. A member's figures change only with their facts or when an order enters or leaves the
-- window (recompute_due), so the daily recompute evaluates those members' orders and ranks everyone
-- from here: the population's means and quintiles need every member's figures, not every order.
-- Members with no counted order have no row. Written by the recompute only, in the transaction
-- that leaves its mark (recompute_marks), so the figures are always those of the mark.
CREATE TABLE rfm_figures (
    tenant_id text        NOT NULL,
    dimension text        NOT NULL,
    member_id text        NOT NULL,
    last_paid timestamptz NOT NULL,
    frequency bigint      NOT NULL,
    monetary  numeric     NOT NULL,
    PRIMARY KEY (tenant_id, dimension, member_id)
);

ALTER TABLE rfm_figures ENABLE ROW LEVEL SECURITY;
ALTER TABLE rfm_figures FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rfm_figures
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- An RFM dimension recomputed before this migration has no figures here: its mark is made unlike
-- any version, so its next recompute evaluates everyone and writes them (see recompute_due's NULL).
UPDATE recompute_marks m SET definition_version = NULL
FROM tag_definition_versions v
WHERE v.tenant_id = m.tenant_id AND v.dimension = m.dimension AND v.version = m.definition_version
  AND v.body->'model' ?| ARRAY['rfmMeanSplit', 'rfmQuintiles'];
