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
it. So instead of the member's statement, one statement (`Guard`, `bitmap_store.freshness`; it
goes with the tenant's batched checks, within their bound of statements in flight) tests that the
audiences are still at the versions the plan was compiled from, and reads the feed's end and
whether committed changes wait for a position, as the index's `caught_up` does. Bitmaps at that
end with nothing waiting are answered from at once (the usual case: the background refresh follows
the feed every 0.1 s); otherwise the index catches up first. The member is tested again on those
bitmaps; an unknown id, a failed guard or bitmaps that could not catch up leave the answer to the
statement, so an unknown member is NOT_FOUND exactly as today and one registered a moment ago is
found by it. With a read replica the guard's statement runs there and cannot speak for the
primary's feed: the index then always catches up.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from runtime import outbox
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


@dataclass(frozen=True)
class Guard:
    """What one statement said, after the call began: whether the definitions the plan was made
    from are current, and the feed's end and whether changes wait unpositioned (`waiting` True
    also when it could not tell: then the index catches up)."""

    current: bool
    end: outbox.Position | None = None
    waiting: bool = True


class BitmapChecks:
    def __init__(self, index: BitmapIndex) -> None:
        self._index = index

    async def answer(
        self,
        tenant_id: str,
        plan: bitmap_plan.Plan | None,
        member_id: str,
        guard: Callable[[], Coroutine[Any, Any, Guard]],
    ) -> bool | None:
        """Whether the member is in the audience `plan` was made for, or None: today's statement
        answers (see the module docstring). `guard` runs the statement that says whether the
        definitions are current and the bitmaps reflect what committed before it."""
        held = self._index.current(tenant_id)
        if plan is None or held is None or verdict(plan, held, member_id) is None:
            return None
        said = await guard()
        if not said.current:
            return None
        if said.waiting or not held.reflects(said.end):
            held = await self._index.caught_up(tenant_id)
            if held is None:
                return None
        return verdict(plan, held, member_id)
