-- The thresholds (means, or quintile bounds) each RFM model's latest recompute ranked its members
-- against, and when (issue 25). A member's segment is a function of its own figures (rfm_figures),
-- that time and these thresholds alone, so the next recompute ranks again only the members whose
-- figures moved and those whose segment the new thresholds or the passing days move; every other
-- member holds what it held. Written in the transaction that writes the tags it ranked, so they
-- always agree. A model with no row here (recomputed before this migration) ranks everyone once.
CREATE TABLE rfm_rankings (
    tenant_id          text        NOT NULL,
    dimension          text        NOT NULL,
    definition_version integer     NOT NULL,
    ranked_at          timestamptz NOT NULL,
    thresholds         numeric[]   NOT NULL,
    PRIMARY KEY (tenant_id, dimension)
);

ALTER TABLE rfm_rankings ENABLE ROW LEVEL SECURITY;
ALTER TABLE rfm_rankings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rfm_rankings
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- A day's recompute rewrites the figures of the members due (32k of 744k on the 1M bench). Room
-- on each page lets those updates stay on their page (HOT) instead of adding an entry to the key's
-- index for each; pages written from now on keep it.
ALTER TABLE rfm_figures SET (fillfactor = 80);
