-- How a coupon issuance to an audience ended (memberops.tasks.v1.CouponIssuanceEnd): 1 every member
-- of the snapshot reached, 2 the template retired while it ran, 3 the template's fixed validity ended
-- while it ran; 0 while it runs. An operation that ended early counted only the members it reached,
-- so the rest (members - issued - skipped - out_of_stock) is what it never reached.
-- Operations done before this migration: completed when their counts add up to the snapshot, else
-- left 0 (which of the two early ends it was is not known).
ALTER TABLE coupon_issuances
    ADD COLUMN ended smallint NOT NULL DEFAULT 0 CHECK (ended BETWEEN 0 AND 3),
    ADD CHECK (ended = 0 OR done);

UPDATE coupon_issuances SET ended = 1 WHERE done AND issued + skipped + out_of_stock >= members;
