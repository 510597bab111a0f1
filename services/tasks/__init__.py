"""The tasks service: its RPCs arrive with the tasks issue; it already serves health and reflection."""
