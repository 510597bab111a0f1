-- Coupon codes an order used (issue 23): kept as the shop reported them, in its order. An order
-- without codes stores the empty array, the default, so adding the column rewrites no row and an
-- order recorded before it reads as one without codes. The tasks service writes the coupons off
-- from the feed entry, which carries the codes; nothing here looks codes up, so no index.
ALTER TABLE orders ADD COLUMN coupon_codes text[] NOT NULL DEFAULT '{}';
