-- Coupon codes an order used (issue 23): kept as the shop reported them, in its order. NULL for an
-- order without codes (most orders: a NULL takes no space in the row, where an empty array took
-- 16 bytes of every order an import writes), and for every order recorded before the column, so
-- adding it rewrites nothing. The tasks service writes the coupons off from the feed entry, which
-- carries the codes; nothing here looks codes up, so no index.
ALTER TABLE orders ADD COLUMN coupon_codes text[];
