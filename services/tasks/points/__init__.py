"""Points: the ledger (earning, spending, adjusting, expiring, reversing), the rewards members
redeem points for, and the leaderboards of points earned. Each concept's rules beside its SQL
(`ledger.py` / `ledger_store.py`, `rewards.py` / `rewards_store.py`, `leaderboards.py` /
`leaderboard_store.py`)."""
