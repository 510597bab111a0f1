"""Reads one member's profile from the tagging service: the first slice through worker and services."""
