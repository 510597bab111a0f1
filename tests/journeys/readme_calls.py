"""The README's `buf curl` walk through a journey's life, as data: each call's RPC and JSON body,
exactly as the README shows them (with `welcome-back` as the key). The tests send the same bodies,
through buf curl when it can run and through protobuf's JSON parser always."""

from __future__ import annotations

import copy
import json
from typing import Any

KEY = "welcome-back"
SERVICE = "memberops.journeys.v1.JourneyService"

DEFINITION: dict[str, Any] = {
    "key": KEY,
    "name": "Welcome back",
    "entry": {"event": {"kind": "first_order"}},
    "steps": [
        {"id": "thanks", "send": {"template": "thanks"}},
        {"id": "wait-2d", "wait": {"duration": "2d"}},
        {"id": "their-hour", "wait_until_hour": {"hour": 10, "preferred": True}},
        {"id": "coupon", "send": {"template": "coupon", "channel": "fallback"}},
    ],
    "templates": {
        "thanks": {"subject": "Thank you, {nickname}", "body": "Hi {nickname}, thanks for your first order."},
        "coupon": {
            "body": "Hi {nickname}, 20 off your next order of {threshold} or more.",
            "tag_fields": [
                {
                    "name": "threshold",
                    "dimension": "average_order_amount",
                    "texts": {"lt_100": "50", "100_200": "100", "200_500": "200", "500_plus": "500"},
                    "default": "100",
                }
            ],
        },
    },
    "goal": {"event": {"kind": "order"}, "attribution": "7d"},
    "holdout_percent": 10,
    "quiet_hours": {"start": "21:00", "end": "09:00"},
}

# (RPC, body) in the README's order.
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("ValidateJourney", {"journey": DEFINITION}),
    ("CreateJourney", {"journey": DEFINITION, "request_id": "create-welcome-back-1"}),
    ("ActivateJourney", {"name": f"journeys/{KEY}"}),
    ("PauseJourney", {"name": f"journeys/{KEY}"}),
    ("GetJourneyReport", {"name": f"journeys/{KEY}"}),
]


def calls(key: str) -> list[tuple[str, dict[str, Any]]]:
    """The README's calls for a journey keyed `key` (tests need a key of their own)."""
    text = json.dumps(CALLS).replace(KEY, key)
    return [(rpc, body) for rpc, body in json.loads(text)]


def readme(address: str, token: str) -> str:
    """The README snippet: one buf curl command per call."""
    lines = []
    for rpc, body in copy.deepcopy(CALLS):
        lines.append(
            "npx --yes @bufbuild/buf@1.75.0 curl --protocol grpc --http2-prior-knowledge \\\n"
            f"  -H 'authorization: Bearer {token}' \\\n"
            f"  -d '{json.dumps(body)}' \\\n"
            f"  http://{address}/{SERVICE}/{rpc}"
        )
    return "\n\n".join(lines)
