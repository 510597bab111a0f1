"""Renders a page: the Jinja2 template with what every page shows (language, labels, the signed-in
state, the CSRF token, where the language switch leads back to) and the display filters.

Templates are autoescaped; only the SVG the console drew itself is marked safe.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2

from console import i18n, session
from console.clients import Problem

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The zone times are shown in (the services count days in the same one by default).
TIME_ZONE = ZoneInfo("Asia/Shanghai")


def timestamp(value: Timestamp | None) -> str:
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return "—"
    return value.ToDatetime(tzinfo=dt.UTC).astimezone(TIME_ZONE).strftime("%Y-%m-%d %H:%M")


def day(value: date_pb2.Date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def money(minor: int) -> str:
    """Minor units as the amount with two decimals (the tenant's currency is not the console's to name)."""
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(int(minor)), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%"


def points(value: float, digits: int = 1) -> str:
    """A difference of two rates in percentage points, signed."""
    return f"{value * 100:+.{digits}f} pp"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(timestamp=timestamp, day=day, money=money, percent=percent, points=points)
    return env


ENV_KEY: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    language = session.language_of(request)
    token = session.token_of(request)
    html = (
        request.app[ENV_KEY]
        .get_template(template)
        .render(
            lang=language,
            t=i18n.translator(language),
            signed_in=token is not None,
            csrf=session.csrf_for(token) if token else "",
            here=request.path_qs,
            path=request.path,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def problem_page(request: web.Request, problem: Problem) -> web.Response:
    """A page that is only the problem its main call met, with the matching HTTP status."""
    return page(request, "error.html", status=problem.http_status, problem=problem, message_key="")


def message_page(request: web.Request, status: int, message_key: str) -> web.Response:
    return page(request, "error.html", status=status, problem=None, message_key=message_key)
