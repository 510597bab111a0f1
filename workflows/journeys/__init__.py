"""Journeys: data-defined multi-step member journeys interpreted by a Temporal workflow."""
