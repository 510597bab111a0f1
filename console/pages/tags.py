"""Tags: the catalog by category (ListTagDefinitions, with each dimension's coverage from
GetTagStats), and one dimension's page: its definition with each value's rule, the distribution of
its values with coverage now, and its distribution week by week (GetTagStats `as_of`, see
console/tag_trends.py). Each section's call may fail on its own; its place then says why.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import structlog
from aiohttp import web
from memberops.tagging.v1 import tagging_service_pb2, tags_pb2

from console import charts, render, rule_text, tag_trends
from console.clients import Caller, Outcome, caller

log = structlog.get_logger("console")
DEFINITION_PAGE = 1000
# Pages of the catalog read at most (a tenant with more dimensions sees the first ones).
MAX_DEFINITION_PAGES = 5
WEEKS = 8
WEEK_CHOICES = (4, 8, 12, 26)
# The seeds' order of categories; a definition without one comes last.
CATEGORIES = (
    tags_pb2.TAG_CATEGORY_CROWD,
    tags_pb2.TAG_CATEGORY_MEMBER,
    tags_pb2.TAG_CATEGORY_BEHAVIOUR,
    tags_pb2.TAG_CATEGORY_TRANSACTION,
    tags_pb2.TAG_CATEGORY_CONSUMPTION,
    tags_pb2.TAG_CATEGORY_MARKETING,
    tags_pb2.TAG_CATEGORY_UNSPECIFIED,
)
# Values listed in the catalog's table before "…".
LISTED_VALUES = 8


def short(enum: Any, number: int, prefix: str) -> str:
    """An enum value's short name, the suffix of its i18n key: TAG_KIND_RULE -> rule."""
    return rule_text.enum_name(enum, number, prefix)


async def _definitions(call: Caller, include_retired: bool) -> Outcome[list[tags_pb2.TagDefinition]]:
    found: list[tags_pb2.TagDefinition] = []
    token = ""
    for _ in range(MAX_DEFINITION_PAGES):
        page = await call.attempt(
            "tagging",
            "ListTagDefinitions",
            tagging_service_pb2.ListTagDefinitionsRequest(
                page_size=DEFINITION_PAGE, page_token=token, include_retired=include_retired
            ),
        )
        if page.problem is not None:
            return Outcome(problem=page.problem)
        found += page.reply.tag_definitions
        token = page.reply.next_page_token
        if not token:
            break
    return Outcome(value=found)


async def catalog(request: web.Request) -> web.Response:
    include_retired = request.query.get("retired") == "1"
    call = caller(request)
    definitions, stats = await asyncio.gather(
        _definitions(call, include_retired),
        call.attempt("tagging", "GetTagStats", tagging_service_pb2.GetTagStatsRequest()),
    )
    if definitions.problem is not None:
        return render.problem_page(request, definitions.problem)
    by_category: dict[int, list[tags_pb2.TagDefinition]] = {}
    for definition in definitions.reply:
        category = (
            definition.category if definition.category in CATEGORIES else tags_pb2.TAG_CATEGORY_UNSPECIFIED
        )
        by_category.setdefault(category, []).append(definition)
    coverage = {d.dimension: d.coverage for d in stats.value.dimensions} if stats.value is not None else {}
    return render.page(
        request,
        "tags.html",
        groups=[
            (short(tags_pb2.TagCategory, c, "TAG_CATEGORY_"), by_category[c])
            for c in CATEGORIES
            if c in by_category
        ],
        include_retired=include_retired,
        coverage=coverage,
        stats_problem=stats.problem,
        short=short,
        listed=LISTED_VALUES,
        enums=tags_pb2,
    )


def _weeks(request: web.Request) -> int:
    text = request.query.get("weeks", str(WEEKS))
    if not text.isdigit() or int(text) not in WEEK_CHOICES:
        raise web.HTTPBadRequest
    return int(text)


async def dimension(request: web.Request) -> web.Response:
    name = request.match_info["dimension"]
    try:
        weeks = _weeks(request)
    except web.HTTPBadRequest:
        return render.message_page(request, 400, "tags.bad_weeks")
    call = caller(request)
    today = dt.datetime.now(render.TIME_ZONE).date()
    started = time.perf_counter()
    definition, stats, trend = await asyncio.gather(
        call.attempt(
            "tagging",
            "GetTagDefinition",
            tagging_service_pb2.GetTagDefinitionRequest(name=f"tagDefinitions/{name}"),
        ),
        call.attempt("tagging", "GetTagStats", tagging_service_pb2.GetTagStatsRequest(dimensions=[name])),
        tag_trends.weekly(call, [name], weeks, today),
    )
    if definition.problem is not None:
        return render.problem_page(request, definition.problem)
    spec = definition.reply
    retired = spec.state == tags_pb2.TAG_DEFINITION_STATE_RETIRED
    counted = stats.value.dimensions[0] if stats.value is not None and stats.value.dimensions else None
    names = {v.value: v.display_name for v in spec.values if v.display_name}
    distribution = (
        charts.bars(
            [{"label": names.get(v.value, v.value), "value": v.member_count} for v in counted.values],
            title="",
        )
        if counted is not None and counted.values
        else None
    )
    history = tag_trends.rows(trend.value, name) if trend.value is not None else []
    over_time = tag_trends.chart(history) if history else None
    called = time.perf_counter()
    drawn = iter(await charts.render_all([c for c in (distribution, over_time) if c is not None]))
    log.info(
        "console_tag_dimension",
        calls_ms=round((called - started) * 1000, 1),
        draw_ms=round((time.perf_counter() - called) * 1000, 1),
        weeks=weeks,
    )
    return render.page(
        request,
        "tag.html",
        spec=spec,
        retired=retired,
        stats=stats,
        counted=counted,
        member_count=stats.value.member_count if stats.value is not None else 0,
        distribution_svg=next(drawn) if distribution is not None else "",
        trend=trend,
        trend_svg=next(drawn) if over_time is not None else "",
        weeks=weeks,
        week_choices=WEEK_CHOICES,
        model=rule_text.model_text(spec),
        rule_of=rule_text.rule_text,
        short=short,
        enums=tags_pb2,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/tags", catalog)
    router.add_get("/tags/{dimension}", dimension)
