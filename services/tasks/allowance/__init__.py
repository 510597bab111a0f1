"""Sharded allowances: budgets and stocks many transactions take from at once (allowance.py)."""
