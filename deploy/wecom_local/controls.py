"""`/_local/...`: the local WeCom server's test and dev controls over HTTP (JSON), for `make up` and
anyone without the Python handle. Each route is one `LocalWeCom` method."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from deploy.wecom_local.corp import Refusal

if TYPE_CHECKING:
    from deploy.wecom_local.server import LocalWeCom

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any) -> web.Response:
    return web.json_response(text=json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _delivered(delivery: Any) -> dict[str, Any] | None:
    return None if delivery is None else {"status": delivery.status, "answer": delivery.answer}


def add_routes(app: web.Application, wecom: LocalWeCom) -> None:
    def guarded(handler: Callable[[dict[str, Any], web.Request], Awaitable[Any]]) -> Handler:
        async def route(request: web.Request) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else {}
            try:
                return _json(await handler(body, request))
            except Refusal as refusal:
                return web.json_response(refusal.answer(), status=400)
            except (KeyError, TypeError, ValueError) as error:
                return web.json_response({"error": str(error)}, status=400)

        return route

    async def staff(body: dict[str, Any], _: web.Request) -> Any:
        wecom.add_staff(body["userid"])
        return {}

    async def customers(body: dict[str, Any], _: web.Request) -> Any:
        wecom.add_customer(
            body["external_userid"], name=body.get("name", ""), follow_users=body.get("follow_users", [])
        )
        return {}

    async def edit_tags(body: dict[str, Any], _: web.Request) -> Any:
        delivery = await wecom.staff_edit_tags(
            body["userid"], body["external_userid"], body.get("add", []), body.get("remove", [])
        )
        return {"callback": _delivered(delivery)}

    async def add_tag(body: dict[str, Any], _: web.Request) -> Any:
        tag_id, delivery = await wecom.staff_add_tag(body["group_name"], body["tag_name"])
        return {"tag_id": tag_id, "callback": _delivered(delivery)}

    async def expire(_: dict[str, Any], __: web.Request) -> Any:
        wecom.expire_tokens()
        return {}

    async def storm(body: dict[str, Any], _: web.Request) -> Any:
        wecom.storm(int(body["errcode"]), int(body["count"]), api=body.get("api"))
        return {}

    async def quota(body: dict[str, Any], _: web.Request) -> Any:
        wecom.set_quota(body["api"], int(body["per_minute"]))
        return {}

    async def advance(body: dict[str, Any], _: web.Request) -> Any:
        wecom.advance(float(body["seconds"]))
        return {}

    async def calls(_: dict[str, Any], request: web.Request) -> Any:
        return wecom.calls(request.query.get("api"))

    async def tags(_: dict[str, Any], request: web.Request) -> Any:
        return wecom.customer_tags(request.match_info["external_userid"], request.query.get("userid"))

    async def messages(_: dict[str, Any], __: web.Request) -> Any:
        return wecom.messages()

    async def library(_: dict[str, Any], __: web.Request) -> Any:
        return wecom.corp.get_corp_tag_list({})["tag_group"]

    app.router.add_routes(
        [
            web.post("/_local/staff", guarded(staff)),
            web.post("/_local/customers", guarded(customers)),
            web.post("/_local/staff_edit_tags", guarded(edit_tags)),
            web.post("/_local/staff_add_tag", guarded(add_tag)),
            web.post("/_local/expire_tokens", guarded(expire)),
            web.post("/_local/storm", guarded(storm)),
            web.post("/_local/quota", guarded(quota)),
            web.post("/_local/advance", guarded(advance)),
            web.get("/_local/calls", guarded(calls)),
            web.get("/_local/customers/{external_userid}/tags", guarded(tags)),
            web.get("/_local/messages", guarded(messages)),
            web.get("/_local/tags", guarded(library)),
        ]
    )
