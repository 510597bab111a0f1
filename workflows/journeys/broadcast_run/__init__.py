"""A broadcast's run: snapshot the journey's audience, then run the cohort of that snapshot to its end."""
