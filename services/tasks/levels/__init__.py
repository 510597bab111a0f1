"""Membership levels by growth value: the policy and its rules (`levels.py`), their SQL
(`level_store.py`), the tasks feed of level changes (`tasks_feed_store.py`) and its relay to
tagging (`publisher.py`)."""
