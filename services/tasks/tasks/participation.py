"""Who may take part in a task (`Participation`), and what the tasks service asks its peers to tell,
as the domain sees it (`Directory`; the gRPC side is `services/tasks/peers.py`).

Tasks owns no members. Whether a member exists and what their profile holds is tagging's answer;
whether they are in an audience is audience's (CheckMembership), never a read of its tables.
Keeping these as a protocol leaves the domain modules free of gRPC.
"""

from __future__ import annotations

from typing import Protocol

from runtime.errors import FailedPrecondition, NotFound
from services.tasks.tasks.definitions import ProfileField, Task


class Directory(Protocol):
    async def member_exists(self, tenant_id: str, member_id: str) -> bool: ...

    async def profile_fields(self, tenant_id: str, member_id: str) -> frozenset[ProfileField] | None:
        """The profile fields the member has filled in; None for an unknown member."""
        ...

    async def audience_exists(self, tenant_id: str, audience_id: str) -> bool: ...

    async def in_audience(self, tenant_id: str, audience_id: str, member_id: str) -> bool | None:
        """Whether the member is in the audience now; None for an unknown member."""
        ...


class Participation:
    """Who may act in a task: a known member, and a member of its audience if it has one."""

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def require(self, tenant_id: str, task: Task, member_id: str) -> None:
        """NOT_FOUND for an unknown member, FAILED_PRECONDITION outside the task's audience."""
        if not await self.eligible(tenant_id, task, member_id):
            raise FailedPrecondition(
                f"members/{member_id} is not in audiences/{task.definition.audience_id}, "
                f"the audience of tasks/{task.task_id}"
            )

    async def eligible(self, tenant_id: str, task: Task, member_id: str) -> bool:
        """Whether a known member may take part; NOT_FOUND for an unknown one."""
        audience_id = task.definition.audience_id
        if audience_id:
            member = await self._directory.in_audience(tenant_id, audience_id, member_id)
            if member is None:
                raise NotFound(f"members/{member_id} not found")
            return member
        await self.require_member(tenant_id, member_id)
        return True

    async def in_audience(self, tenant_id: str, task: Task, member_id: str) -> bool:
        """For members tagging's feed named (so known): whether they are in the task's audience,
        True when it has none."""
        audience_id = task.definition.audience_id
        return not audience_id or bool(await self._directory.in_audience(tenant_id, audience_id, member_id))

    async def require_member(self, tenant_id: str, member_id: str) -> None:
        if not await self._directory.member_exists(tenant_id, member_id):
            raise NotFound(f"members/{member_id} not found")
