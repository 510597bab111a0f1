"""Tasks: their definitions and what members do in them (sign-ins, shares, invites, the progress of
counted tasks, enrolments), the completions that pay into the points ledger, and each task as one
member sees it. Each concept's rules beside its SQL (`<concept>.py` / `<concept>_store.py`)."""
