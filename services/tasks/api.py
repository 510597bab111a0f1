"""TasksService over gRPC: protobuf in, domain calls, protobuf out.

Domain errors propagate to the shared interceptor, which turns them into status codes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memberops.tasks.v1 import (
    levels_pb2,
    points_pb2,
    rewards_pb2,
    tasks_pb2,
    tasks_service_pb2,
    tasks_service_pb2_grpc,
)

from runtime import day_ranges
from runtime.auth import current_tenant
from runtime.erasure import Erasures
from runtime.errors import InvalidArgument, Violations
from services.tasks import messages
from services.tasks.badges.api import BadgeRpcs
from services.tasks.badges.badges import Badges
from services.tasks.coupons.api import CouponRpcs, CouponServices
from services.tasks.coupons.violation_messages import violations_response
from services.tasks.coupons.violations import CouponViolations
from services.tasks.daily_kpis import DailyKpiReader
from services.tasks.economy import messages as economy_messages
from services.tasks.economy.level_benefits import LevelBenefits
from services.tasks.economy.order_earning import OrderEarningRules
from services.tasks.issuances.api import IssuanceRpcs
from services.tasks.issuances.issuances import Issuances
from services.tasks.levels.levels import Levels
from services.tasks.messages import stamp
from services.tasks.points import ledger, reward_messages
from services.tasks.points.leaderboards import Leaderboards
from services.tasks.points.ledger import Ledger
from services.tasks.points.rewards import Rewards
from services.tasks.tasks.definitions import TaskDefinitions, task_id_from_name
from services.tasks.tasks.invites import Invites
from services.tasks.tasks.member_tasks import MemberTasks
from services.tasks.tasks.shares import Shares
from services.tasks.tasks.signin import SignIns


@dataclass(frozen=True)
class TaskServices:
    """The task side of the API: definitions and what members do."""

    definitions: TaskDefinitions
    member_tasks: MemberTasks
    sign_ins: SignIns
    shares: Shares
    invites: Invites
    levels: Levels
    coupons: CouponServices
    coupon_issuances: Issuances
    coupon_violations: CouponViolations
    order_earning: OrderEarningRules
    level_benefits: LevelBenefits
    badges: Badges


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TasksApi(CouponRpcs, IssuanceRpcs, BadgeRpcs, tasks_service_pb2_grpc.TasksServiceServicer):
    def __init__(
        self,
        points: Ledger,
        rewards: Rewards,
        leaderboards: Leaderboards,
        tasks: TaskServices,
        clock: Callable[[], dt.datetime] = utc_now,
        *,
        erasures: Erasures,
        daily_kpis: DailyKpiReader,
    ) -> None:
        self._erasures = erasures
        self._daily_kpis = daily_kpis
        self._leaderboards = leaderboards
        self._tasks = tasks
        self._points = points
        self._rewards = rewards
        self._clock = clock

    def _coupons(self) -> CouponServices:
        return self._tasks.coupons

    def _issuances(self) -> Issuances:
        return self._tasks.coupon_issuances

    def _badges(self) -> Badges:
        return self._tasks.badges

    async def EarnPoints(
        self, request: tasks_service_pb2.EarnPointsRequest, context: Any
    ) -> points_pb2.LedgerEntry:
        v = Violations()
        reason = ledger.earn_reason(v, request.reason)
        expiry = ledger.expiry(v, request.expiry_policy, request.expiry_days)
        v.raise_if_any()
        earn = ledger.Earn(
            member_id=request.member_id,
            amount=request.amount,
            reason=reason,
            reference=request.reference,
            expiry=expiry,
            return_window_days=request.return_window_days,
            request_id=request.request_id,
        )
        return messages.entry_to_proto(await self._points.earn(current_tenant(), earn, self._clock()))

    async def SpendPoints(
        self, request: tasks_service_pb2.SpendPointsRequest, context: Any
    ) -> points_pb2.LedgerEntry:
        spend = ledger.Spend(request.member_id, request.amount, request.reference, request.request_id)
        return messages.entry_to_proto(await self._points.spend(current_tenant(), spend, self._clock()))

    async def AdjustPoints(
        self, request: tasks_service_pb2.AdjustPointsRequest, context: Any
    ) -> points_pb2.LedgerEntry:
        v = Violations()
        expiry = ledger.expiry(
            v, request.expiry_policy, request.expiry_days, default=ledger.ExpiryPolicy.NEVER
        )
        v.raise_if_any()
        adjust = ledger.Adjust(
            member_id=request.member_id,
            delta=request.delta,
            operator=request.operator,
            note=request.note,
            expiry=expiry,
            request_id=request.request_id,
        )
        return messages.entry_to_proto(await self._points.adjust(current_tenant(), adjust, self._clock()))

    async def ReverseOrderPoints(
        self, request: tasks_service_pb2.ReverseOrderPointsRequest, context: Any
    ) -> points_pb2.LedgerEntry:
        return messages.entry_to_proto(
            await self._points.reverse_order(current_tenant(), request.member_id, request.order_id)
        )

    async def GetBalance(
        self, request: tasks_service_pb2.GetBalanceRequest, context: Any
    ) -> points_pb2.Balance:
        balance = await self._points.balance(
            current_tenant(), request.member_id, request.expiring_within_days, self._clock()
        )
        message = points_pb2.Balance(
            member_id=balance.member_id,
            available=balance.available,
            pending=balance.pending,
            expiring=balance.expiring,
        )
        if balance.next_expire_time is not None:
            message.next_expire_time.CopyFrom(stamp(balance.next_expire_time))
        return message

    async def ListLedgerEntries(
        self, request: tasks_service_pb2.ListLedgerEntriesRequest, context: Any
    ) -> tasks_service_pb2.ListLedgerEntriesResponse:
        page, token = await self._points.entries(
            current_tenant(), request.member_id, request.page_size, request.page_token
        )
        return tasks_service_pb2.ListLedgerEntriesResponse(
            entries=[messages.entry_to_proto(e) for e in page], next_page_token=token
        )

    async def ExpirePoints(
        self, request: tasks_service_pb2.ExpirePointsRequest, context: Any
    ) -> tasks_service_pb2.ExpirePointsResponse:
        v = Violations()
        as_of = messages.time_field(request, "as_of", v, "as_of")
        v.raise_if_any()
        run = await self._points.expire(current_tenant(), as_of, self._clock())
        return tasks_service_pb2.ExpirePointsResponse(expired_lots=run.lots, expired_points=run.points)

    async def CreateReward(
        self, request: tasks_service_pb2.CreateRewardRequest, context: Any
    ) -> rewards_pb2.Reward:
        if not request.HasField("reward"):
            raise InvalidArgument.field("reward", "is required")
        return messages.reward_to_proto(
            await self._rewards.create(current_tenant(), messages.reward_from_proto(request.reward))
        )

    async def ListRewards(
        self, request: tasks_service_pb2.ListRewardsRequest, context: Any
    ) -> tasks_service_pb2.ListRewardsResponse:
        page, token = await self._rewards.list_page(
            current_tenant(), request.page_size, request.page_token, request.show_retired
        )
        return tasks_service_pb2.ListRewardsResponse(
            rewards=[messages.reward_to_proto(r) for r in page], next_page_token=token
        )

    async def Redeem(self, request: tasks_service_pb2.RedeemRequest, context: Any) -> rewards_pb2.Redemption:
        redemption = await self._rewards.redeem(
            current_tenant(), request.member_id, request.reward_id, request.request_id, self._clock()
        )
        return messages.redemption_to_proto(redemption)

    async def UpdateReward(
        self, request: tasks_service_pb2.UpdateRewardRequest, context: Any
    ) -> rewards_pb2.Reward:
        update = reward_messages.update_from_proto(request)
        return messages.reward_to_proto(await self._rewards.update(current_tenant(), update))

    async def RetireReward(
        self, request: tasks_service_pb2.RetireRewardRequest, context: Any
    ) -> rewards_pb2.Reward:
        return messages.reward_to_proto(await self._rewards.retire(current_tenant(), request.reward_id))

    async def GetLeaderboard(
        self, request: tasks_service_pb2.GetLeaderboardRequest, context: Any
    ) -> tasks_service_pb2.Leaderboard:
        v = Violations()
        at = messages.time_field(request, "at", v, "at")
        v.raise_if_any()
        board = await self._leaderboards.board(
            current_tenant(),
            request.period,
            at or self._clock(),
            request.time_zone,
            request.top_n,
            request.member_id,
        )
        reply = tasks_service_pb2.Leaderboard(
            start_time=stamp(board.start),
            end_time=stamp(board.end),
            top=[messages.place_to_proto(p) for p in board.top],
        )
        if board.member is not None:
            reply.member.CopyFrom(messages.place_to_proto(board.member))
        return reply

    # --- task definitions ------------------------------------------------------------------------

    async def CreateTask(self, request: tasks_service_pb2.CreateTaskRequest, context: Any) -> tasks_pb2.Task:
        definition = messages.definition_from_proto(request.task)
        return messages.task_to_proto(await self._tasks.definitions.create(current_tenant(), definition))

    async def UpdateTask(self, request: tasks_service_pb2.UpdateTaskRequest, context: Any) -> tasks_pb2.Task:
        definition = messages.definition_from_proto(request.task)
        task = await self._tasks.definitions.update(current_tenant(), definition, request.expected_version)
        return messages.task_to_proto(task)

    async def GetTask(self, request: tasks_service_pb2.GetTaskRequest, context: Any) -> tasks_pb2.Task:
        task_id = task_id_from_name(request.name, "name")
        return messages.task_to_proto(await self._tasks.definitions.get(current_tenant(), task_id))

    async def ListTasks(
        self, request: tasks_service_pb2.ListTasksRequest, context: Any
    ) -> tasks_service_pb2.ListTasksResponse:
        page, token = await self._tasks.definitions.list_page(
            current_tenant(), request.page_size, request.page_token, request.show_retired
        )
        return tasks_service_pb2.ListTasksResponse(
            tasks=[messages.task_to_proto(t) for t in page], next_page_token=token
        )

    async def RetireTask(self, request: tasks_service_pb2.RetireTaskRequest, context: Any) -> tasks_pb2.Task:
        task_id = task_id_from_name(request.name, "name")
        return messages.task_to_proto(await self._tasks.definitions.retire(current_tenant(), task_id))

    # --- what members do -------------------------------------------------------------------------

    async def ListMemberTasks(
        self, request: tasks_service_pb2.ListMemberTasksRequest, context: Any
    ) -> tasks_service_pb2.ListMemberTasksResponse:
        page, token = await self._tasks.member_tasks.list_page(
            current_tenant(), request.member_id, request.page_size, request.page_token, self._clock()
        )
        return tasks_service_pb2.ListMemberTasksResponse(
            member_tasks=[messages.member_task_to_proto(t) for t in page], next_page_token=token
        )

    async def SignIn(self, request: tasks_service_pb2.SignInRequest, context: Any) -> tasks_pb2.SignInRecord:
        task_id = task_id_from_name(request.task, "task")
        makeup = (
            messages.date_from_proto(request.makeup_day, "makeup_day")
            if request.HasField("makeup_day")
            else None
        )
        record = await self._tasks.sign_ins.sign_in(
            current_tenant(), task_id, request.member_id, makeup, request.request_id, self._clock()
        )
        return messages.sign_in_to_proto(record)

    async def GetStreak(self, request: tasks_service_pb2.GetStreakRequest, context: Any) -> tasks_pb2.Streak:
        task_id = task_id_from_name(request.task, "task")
        streak = await self._tasks.sign_ins.streak(
            current_tenant(), task_id, request.member_id, self._clock()
        )
        return messages.streak_to_proto(streak)

    async def RecordShare(
        self, request: tasks_service_pb2.RecordShareRequest, context: Any
    ) -> tasks_pb2.ShareRecord:
        task_id = task_id_from_name(request.task, "task")
        record = await self._tasks.shares.record(
            current_tenant(), task_id, request.member_id, request.target, request.request_id, self._clock()
        )
        return messages.share_to_proto(record)

    async def RecordInvite(
        self, request: tasks_service_pb2.RecordInviteRequest, context: Any
    ) -> tasks_pb2.Invite:
        task_id = task_id_from_name(request.task, "task")
        invite = await self._tasks.invites.record(
            current_tenant(),
            task_id,
            request.inviter_member_id,
            request.invitee_member_id,
            request.request_id,
            self._clock(),
        )
        return messages.invite_to_proto(invite)

    async def EnrolTask(
        self, request: tasks_service_pb2.EnrolTaskRequest, context: Any
    ) -> tasks_pb2.Enrolment:
        task_id = task_id_from_name(request.task, "task")
        enrolment = await self._tasks.member_tasks.enrol(
            current_tenant(), task_id, request.member_id, self._clock()
        )
        return messages.enrolment_to_proto(enrolment)

    async def ClaimTaskReward(
        self, request: tasks_service_pb2.ClaimTaskRewardRequest, context: Any
    ) -> tasks_pb2.Completion:
        task_id = task_id_from_name(request.task, "task")
        claimed = await self._tasks.member_tasks.claim(
            current_tenant(), task_id, request.member_id, request.request_id, self._clock()
        )
        return messages.completion_to_proto(claimed)

    # --- levels ----------------------------------------------------------------------------------

    async def GetLevelPolicy(
        self, request: tasks_service_pb2.GetLevelPolicyRequest, context: Any
    ) -> levels_pb2.LevelPolicy:
        return messages.policy_to_proto(await self._tasks.levels.policy(current_tenant()))

    async def UpdateLevelPolicy(
        self, request: tasks_service_pb2.UpdateLevelPolicyRequest, context: Any
    ) -> levels_pb2.LevelPolicy:
        policy = messages.policy_from_proto(request.policy)
        updated = await self._tasks.levels.update_policy(current_tenant(), policy, request.expected_version)
        return messages.policy_to_proto(updated)

    async def GetMemberLevel(
        self, request: tasks_service_pb2.GetMemberLevelRequest, context: Any
    ) -> levels_pb2.MemberLevel:
        level = await self._tasks.levels.member_level(current_tenant(), request.member_id, self._clock())
        return messages.member_level_to_proto(level)

    async def EvaluateLevels(
        self, request: tasks_service_pb2.EvaluateLevelsRequest, context: Any
    ) -> tasks_service_pb2.EvaluateLevelsResponse:
        v = Violations()
        as_of = messages.time_field(request, "as_of", v, "as_of")
        v.raise_if_any()
        run = await self._tasks.levels.evaluate(current_tenant(), as_of, self._clock())
        return tasks_service_pb2.EvaluateLevelsResponse(
            period_end_time=stamp(run.period_end),
            members_evaluated=run.evaluated,
            upgraded=run.upgraded,
            downgraded=run.downgraded,
        )

    async def ReadTasksFeed(
        self, request: tasks_service_pb2.ReadTasksFeedRequest, context: Any
    ) -> tasks_service_pb2.ReadTasksFeedResponse:
        entries, cursor = await self._tasks.levels.read_feed(
            current_tenant(), request.after_cursor, request.limit
        )
        return tasks_service_pb2.ReadTasksFeedResponse(
            entries=[messages.tasks_feed_entry_to_proto(e) for e in entries], next_cursor=cursor
        )

    async def GetOrderEarningRule(
        self, request: tasks_service_pb2.GetOrderEarningRuleRequest, context: Any
    ) -> points_pb2.OrderEarningRule:
        return economy_messages.rule_to_proto(await self._tasks.order_earning.rule(current_tenant()))

    async def UpdateOrderEarningRule(
        self, request: tasks_service_pb2.UpdateOrderEarningRuleRequest, context: Any
    ) -> points_pb2.OrderEarningRule:
        v = Violations()
        rule = economy_messages.rule_from_proto(request.rule, v)
        v.raise_if_any()
        updated = await self._tasks.order_earning.update(
            current_tenant(), rule, request.expected_version, self._clock()
        )
        return economy_messages.rule_to_proto(updated)

    async def ListCouponViolations(
        self, request: tasks_service_pb2.ListCouponViolationsRequest, context: Any
    ) -> tasks_service_pb2.ListCouponViolationsResponse:
        rows, token = await self._tasks.coupon_violations.list(
            current_tenant(), request.member_id, request.order_id, request.page_size, request.page_token
        )
        return violations_response(rows, token)

    async def GrantLevelBenefits(
        self, request: tasks_service_pb2.GrantLevelBenefitsRequest, context: Any
    ) -> tasks_service_pb2.GrantLevelBenefitsResponse:
        v = Violations()
        as_of = messages.time_field(request, "as_of", v, "as_of")
        v.raise_if_any()
        run = await self._tasks.level_benefits.grant(current_tenant(), as_of, self._clock())
        return tasks_service_pb2.GrantLevelBenefitsResponse(
            monthly_coupons=run.monthly_coupons,
            birthday_coupons=run.birthday_coupons,
            out_of_stock=run.out_of_stock,
        )

    async def GetDailyKpis(
        self, request: tasks_service_pb2.GetDailyKpisRequest, context: Any
    ) -> tasks_service_pb2.GetDailyKpisResponse:
        days = await self._daily_kpis.days(current_tenant(), day_ranges.checked(request))
        return tasks_service_pb2.GetDailyKpisResponse(
            days=[
                tasks_service_pb2.DailyKpis(
                    date=messages.date_to_proto(d.day),
                    sign_ins=d.sign_ins,
                    sign_in_members=d.sign_in_members,
                    points_issued=d.points_issued,
                    points_redeemed=d.points_redeemed,
                )
                for d in days
            ]
        )

    async def EraseMemberData(
        self, request: tasks_service_pb2.EraseMemberDataRequest, context: Any
    ) -> tasks_service_pb2.EraseMemberDataResponse:
        changed = await self._erasures.erase(current_tenant(), request.member_id, request.pseudonym)
        return tasks_service_pb2.EraseMemberDataResponse(changed_rows=changed)
