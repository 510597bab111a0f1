"""Erasing a member's data in the tasks service (called by tagging's EraseMember): the member's
points, progress, completions, rewards, levels and invites go on under a pseudonym, in one
transaction, so the ledger's balances and the tasks' budgets add up as before."""

from __future__ import annotations

from runtime.db import Database
from runtime.erasure import checked
from services.tasks import erasure_store


class Erasures:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def erase(self, tenant_id: str, member_id: str, pseudonym: str) -> dict[str, int]:
        """The rows changed, by table; nothing when the member has nothing left here."""
        erasure = checked(member_id, pseudonym)
        async with self._db.transaction(tenant_id) as conn:
            return await erasure_store.erase(conn, erasure)
