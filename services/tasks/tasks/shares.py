"""Share tasks: each distinct target a member shares earns the task's points once, up to the
task's daily cap (`limits.per_day`, days in the task's zone) and total limit.

The share of a target is its natural key: sharing it again under another request id is
ALREADY_EXISTS, a retry of the same request returns the first result. Over the cap is
RESOURCE_EXHAUSTED and records nothing, so the share can be made again tomorrow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from runtime.errors import AlreadyExists, Violations
from services.tasks.points import ledger, ledger_store
from services.tasks.tasks import completion_store, completions, share_store
from services.tasks.tasks.completion_store import CompletionRow
from services.tasks.tasks.completions import Grant
from services.tasks.tasks.definitions import Kind, Task
from services.tasks.tasks.member_calls import MemberCalls
from services.tasks.tasks.share_store import ShareRow


@dataclass(frozen=True)
class ShareRecord:
    share: ShareRow
    completion: CompletionRow


class Shares(MemberCalls):
    async def record(
        self, tenant_id: str, task_id: str, member_id: str, target: str, request_id: str, now: dt.datetime
    ) -> ShareRecord:
        v = Violations()
        ledger.check_member_id(v, "member_id", member_id)
        ledger.check_id(v, "target", target)
        ledger.check_id(v, "request_id", request_id)
        v.raise_if_any()
        digest = ledger.content_hash("share", task_id, member_id, target)

        return await self._act(
            tenant_id,
            task_id,
            Kind.SHARE,
            member_id,
            now,
            lambda task: self._write(tenant_id, task, member_id, target, request_id, digest, now),
        )

    async def _write(
        self,
        tenant_id: str,
        task: Task,
        member_id: str,
        target: str,
        request_id: str,
        digest: str,
        now: dt.datetime,
    ) -> ShareRecord:
        day = task.definition.day(now)
        async with self._db.transaction(tenant_id) as conn:
            await ledger_store.lock_account(conn, tenant_id, member_id)
            first = await share_store.share_by_request(conn, request_id)
            if first is None:
                first = await share_store.share(conn, task.task_id, member_id, target)
                if first is not None:
                    raise AlreadyExists(
                        f"members/{member_id} already shared {target!r} in tasks/{task.task_id}"
                    )
            elif first.content_hash != digest:
                raise AlreadyExists(f"request_id {request_id!r} was used for a different request")
            if first is not None:
                paid = await completion_store.completion(conn, first.completion_id)
                assert paid is not None
                return ShareRecord(first, paid)
            await completions.check_limits(conn, task, member_id, day)
            grant = Grant(member_id, task.definition.reward_points, f"share {target}", day)
            completion = await completions.grant(conn, tenant_id, task, grant, now)
            row = await share_store.insert_share(
                conn, tenant_id, task.task_id, member_id, target, completion.completion_id, request_id, digest
            )
            return ShareRecord(row, completion)
