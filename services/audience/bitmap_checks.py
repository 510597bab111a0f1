"""CheckMembership of an evaluated ("static") audience through the tenant's bitmaps (issue 25).

A check runs today's member-filtered statement (`Evaluator.check`). When the audience's bitmap plan
(`bitmap_plan`) has a set part (tags, bucketed profile fields, references made of those), that part
is tested for the one member as a few membership tests of its number (no bitmap is built, so
nothing needs caching or invalidating as the index moves):

- the set part excludes the member: not a member, without a statement;
- the whole rule is set algebra, or the member passes every remaining part through its bitmap
  branches (`Part.free`): a member, without a statement;
- otherwise (or the member is unknown to the index): today's statement answers, as before.

The first test reads the bitmaps as last refreshed (`BitmapIndex.current`), which costs nothing:
a member who passes the set part there needs the statement anyway, and the statement is right
whatever the bitmaps hold. Only an answer without a statement must see what committed before the
call (the caller's own writes) and be of the current definition, as the statement's guard makes
it: the index is then caught up (`caught_up`, shared by the tenant's concurrent callers) while, at
the same time, the statement's guard alone tests that the audiences are still at the versions the
plan was compiled from (`Evaluator.check`: it goes with the tenant's batched checks, within their
bound of statements in flight). The member is tested again on the caught-up bitmaps; an unknown
id, a failed guard or bitmaps that could not catch up leave the answer to the statement, so an
unknown member is NOT_FOUND exactly as today and one registered a moment ago is found by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from services.audience import bitmap_plan
from services.audience.bitmaps import BitmapIndex, TenantBitmaps


def verdict(plan: bitmap_plan.Plan, held: TenantBitmaps, member_id: str) -> bool | None:
    """The member's membership as far as the bitmaps decide it; None: the statement must (also
    when the index does not know the id)."""
    if plan.bitmap is None and not any(part.free is not None for part in plan.parts):
        return None
    number = held.number_of(member_id)
    if number is None:
        return None
    if plan.bitmap is not None and not holds(plan.bitmap, held, number):
        return False
    if all(part.free is not None and holds(part.free, held, number) for part in plan.parts):
        return True
    return None


def holds(expr: bitmap_plan.Expr, held: TenantBitmaps, number: int) -> bool:
    """Whether member `number` is in `expr`'s set: `expr.evaluate(held)` tested for one member."""
    if isinstance(expr, bitmap_plan.TagSet):
        return held.holds_tag(number, expr.dimension, expr.values)
    if isinstance(expr, bitmap_plan.ProfileSet):
        found = held.holds_profile(number, expr.field, expr.values)
        assert found is not None, f"{expr.field} was bucketed when the plan was made"
        return found
    if isinstance(expr, bitmap_plan.AllOf):
        return all(holds(part, held, number) for part in expr.parts)
    if isinstance(expr, bitmap_plan.AnyOf):
        return any(holds(part, held, number) for part in expr.parts)
    if isinstance(expr, bitmap_plan.NotOf):
        return number in held.universe and not holds(expr.part, held, number)
    raise TypeError(f"no membership test for {type(expr).__name__}")


class BitmapChecks:
    def __init__(self, index: BitmapIndex) -> None:
        self._index = index

    async def answer(
        self,
        tenant_id: str,
        plan: bitmap_plan.Plan | None,
        member_id: str,
        current: Callable[[], Coroutine[Any, Any, bool]],
    ) -> bool | None:
        """Whether the member is in the audience `plan` was made for, or None: today's statement
        answers (see the module docstring). `current` tells whether the definitions the plan was
        made from are still the current ones."""
        held = self._index.current(tenant_id)
        if plan is None or held is None or verdict(plan, held, member_id) is None:
            return None
        async with asyncio.TaskGroup() as group:
            caught_up = group.create_task(self._index.caught_up(tenant_id))
            guarded = group.create_task(current())
        held = caught_up.result()
        if held is None or not guarded.result():
            return None
        return verdict(plan, held, member_id)
