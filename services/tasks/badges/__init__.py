"""Badges: definitions, and the badges members hold (awarded by tasks and sign-in streaks)."""
