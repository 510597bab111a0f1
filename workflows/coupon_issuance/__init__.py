"""Coupon issuances to an audience: IssueCouponToAudience's long-running operation, one workflow per
request that hands the operation's snapshot, page by page, to the tasks service's
IssueCouponIssuancePage."""
