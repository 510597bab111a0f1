"""What the coupon issuance's workflow, its activity and the tasks service exchange."""

from __future__ import annotations

from dataclasses import dataclass

WORKFLOW = "CouponIssuance"
ISSUE_PAGE = "coupon_issuance.issue_page"
# About 6 history events a page: 300 pages (60,000 members) keep a run near 1,800 events.
PAGES_PER_RUN = 300


def workflow_id(tenant_id: str, request_id: str) -> str:
    return f"coupon-issuance/{tenant_id}/{request_id}"


@dataclass(frozen=True)
class IssuanceInput:
    """One issuance, and where it stands: the page to issue next (what a run hands the next one
    when it continues as new). The operation's content is in the tasks service's row."""

    tenant_id: str
    request_id: str
    page_token: str = ""
    pages_per_run: int = PAGES_PER_RUN


@dataclass(frozen=True)
class IssuePage:
    """The activity's input: issue one page of the operation's snapshot."""

    tenant_id: str
    request_id: str
    page_token: str


@dataclass(frozen=True)
class PageIssued:
    """The operation after the page: its counts so far, and the next page ("" once done)."""

    next_page_token: str
    members: int
    issued: int
    skipped: int
    out_of_stock: int
    done: bool
