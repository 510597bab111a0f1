"""The audience service: its RPCs arrive with the audience issue; it already serves health and reflection."""
