"""Periodic jobs (tag recompute, points expiry, level evaluation) as Temporal Schedules, each
starting one small workflow."""
