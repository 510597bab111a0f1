"""What every member call shares: the task it acts in, the member's right to take part, and
retries when a concurrent write got in first.

A call reads the task as it is now (NOT_FOUND, wrong kind, retired or outside its validity are
refused), checks the member (NOT_FOUND unknown, FAILED_PRECONDITION outside the task's audience),
then runs its transaction. That transaction runs once more when another member's write took the
same request id first (the unique index tells, and the second run finds that first result) or
when the task changed under it (the second run reads the new definition).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from runtime.db import Database
from services.tasks.tasks import completions
from services.tasks.tasks.definitions import Kind, Task, TaskDefinitions
from services.tasks.tasks.participation import Participation

_T = TypeVar("_T")


class MemberCalls:
    def __init__(self, db: Database, definitions: TaskDefinitions, participation: Participation) -> None:
        self._db = db
        self._definitions = definitions
        self._participation = participation

    async def _act(
        self,
        tenant_id: str,
        task_id: str,
        kind: Kind,
        member_id: str,
        now: dt.datetime,
        write: Callable[[Task], Awaitable[_T]],
    ) -> _T:
        async def attempt(fresh: bool) -> _T:
            task = await self._definitions.open_for(tenant_id, task_id, kind, now, fresh=fresh)
            await self._participation.require(tenant_id, task, member_id)
            try:
                return await write(task)
            except asyncpg.UniqueViolationError:
                return await write(task)

        return await completions.retry_if_stale(attempt)
