"""Periodic jobs (tag recompute, points expiry) as Temporal Schedules that start one workflow each."""
