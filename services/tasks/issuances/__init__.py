"""IssueCouponToAudience: a template's coupon to every member of an audience snapshot, as a
long-running operation run by a Temporal workflow (workflows/coupon_issuance) page by page."""
