"""The badge RPCs of TasksService: a mixin of `services.tasks.api.TasksApi`, which hands it the
badges (`_badges`)."""

from __future__ import annotations

from typing import Any

from memberops.tasks.v1 import badges_pb2, tasks_service_pb2

from runtime.auth import current_tenant
from services.tasks.badges.badge_store import BadgeRow, MemberBadgeRow
from services.tasks.badges.badges import BadgeDefinition, Badges
from services.tasks.messages import stamp


def badge_to_proto(row: BadgeRow) -> badges_pb2.Badge:
    return badges_pb2.Badge(
        name=f"badges/{row.badge_id}",
        badge_id=row.badge_id,
        display_name=row.display_name,
        description=row.description,
        create_time=stamp(row.create_time),
    )


def member_badge_to_proto(row: MemberBadgeRow) -> badges_pb2.MemberBadge:
    return badges_pb2.MemberBadge(
        badge_id=row.badge_id,
        member_id=row.member_id,
        display_name=row.display_name,
        source=row.source,
        award_time=stamp(row.award_time),
    )


class BadgeRpcs:
    def _badges(self) -> Badges:
        raise NotImplementedError

    async def CreateBadge(
        self, request: tasks_service_pb2.CreateBadgeRequest, context: Any
    ) -> badges_pb2.Badge:
        b = request.badge
        d = BadgeDefinition(b.badge_id, b.display_name, b.description)
        return badge_to_proto(await self._badges().create(current_tenant(), d))

    async def ListBadges(
        self, request: tasks_service_pb2.ListBadgesRequest, context: Any
    ) -> tasks_service_pb2.ListBadgesResponse:
        page, token = await self._badges().list_page(current_tenant(), request.page_size, request.page_token)
        return tasks_service_pb2.ListBadgesResponse(
            badges=[badge_to_proto(r) for r in page], next_page_token=token
        )

    async def ListMemberBadges(
        self, request: tasks_service_pb2.ListMemberBadgesRequest, context: Any
    ) -> tasks_service_pb2.ListMemberBadgesResponse:
        rows = await self._badges().of_member(current_tenant(), request.member_id)
        return tasks_service_pb2.ListMemberBadgesResponse(badges=[member_badge_to_proto(r) for r in rows])
