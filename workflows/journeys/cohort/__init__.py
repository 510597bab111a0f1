"""Broadcast journeys: one workflow per cohort (a journey and an audience snapshot), in batches."""
