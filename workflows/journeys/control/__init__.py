"""Carrying a journey's state change (pause, resume, archive) to its running members and cohorts."""
