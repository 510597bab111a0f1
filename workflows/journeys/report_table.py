"""The journey report as text tables: steps, arms, comparisons (what the report command prints)."""

from __future__ import annotations

from collections.abc import Sequence

from memberops.journeys.v1 import report_pb2

STEP_COLUMNS = ("entered", "sent", "skipped", "deferred", "failed", "unknown", "held_out", "done")


def _money(minor: int) -> str:
    return f"{minor / 100:,.2f}"


def _percent(share: float) -> str:
    return f"{100 * share:.2f}%"


def _points(share: float) -> str:
    return f"{100 * share:+.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, the others right-aligned, each as wide as its widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in (header, *rows)
    ]


def render(report: report_pb2.JourneyReport) -> str:
    version = f"version {report.version}" if report.version else "all versions"
    window = f", goal within {report.attribution} of entry" if report.attribution else ", no goal"
    lines = [
        f"journey {report.journey_key} ({version}{window}; "
        f"{report.member_runs:,} member runs, {report.cohorts:,} broadcast cohorts)",
        "",
    ]
    lines += table(
        ("step", *STEP_COLUMNS),
        [(s.step_id, *(f"{getattr(s, c):,}" for c in STEP_COLUMNS)) for s in report.steps],
    )
    lines.append("")
    lines += table(
        (
            "arm",
            "members",
            "active",
            "converted",
            "rate",
            "95% interval",
            "GMV",
            "GMV/member",
            "coupons",
            "used",
        ),
        [
            (
                a.arm,
                f"{a.members:,}",
                f"{a.active:,}",
                f"{a.conversions:,}",
                _percent(a.rate),
                f"{_percent(a.ci_low)} - {_percent(a.ci_high)}",
                _money(a.gmv_minor),
                _money(a.gmv_per_member_minor),
                "?" if report.coupons_unavailable else f"{a.coupons_issued:,}",
                "?" if report.coupons_unavailable else f"{a.coupons_used:,}",
            )
            for a in report.arms
        ],
    )
    if report.coupons_unavailable:
        lines.append("coupons: ? the tasks service did not answer")
    lines.append("")
    lines += table(
        ("arm vs baseline", "uplift (points)", "95% interval", "p-value", ""),
        [
            (
                f"{c.arm} vs {c.baseline}",
                _points(c.difference),
                f"{_points(c.ci_low)} to {_points(c.ci_high)}",
                f"{c.p_value:.4f}",
                "too small to say" if c.too_small else "",
            )
            for c in report.comparisons
        ],
    )
    return "\n".join(lines)
