"""Coupons: templates, the coupons issued and claimed from them, and their figures."""
