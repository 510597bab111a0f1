"""Following tagging's feed: the entries as tasks reads them (`source.py`), the follower that
applies them to counted tasks, invites and refunds (`follower.py`), and the cursors of the feeds
tasks reads (`cursor_store.py`)."""
