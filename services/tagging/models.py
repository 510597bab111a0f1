"""Built-in models (RFM, lifecycle, preferences): parameter checks and compilation to one query.

A model compiles to the same shape as a rule dimension (`rules.CompiledDimension`: a row per
member with its `tag_values` and figures), so the full recompute, the real-time refresh and
`ExplainTags` need nothing model-specific. Models that compare a member with the population
(RFM) compute the population's thresholds in the same statement, before any member filter, so
explaining one member sees the same means and quintiles as the recompute, which computes them from
each member's figures as it keeps them (`KeptFigures`) rather than aggregating every order again,
and ranks against them through the same cell expression.
Parameters reach PostgreSQL only as bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from memberops.tagging.v1 import facts_pb2, models_pb2

from runtime import zones
from runtime.errors import Violations
from services.tagging.rules import MAX_WINDOW_DAYS, CompiledDimension, Input

SINGLE = 1
MULTI = 2
MAX_TOP_N = 10
MAX_INTEREST_DAYS = 365
MAX_VALUE = 64

# Bit pattern (R high = 4, F high = 2, M high = 1) -> segment of the mean-split RFM model.
_MEAN_SPLIT = {
    0b111: "important_value",
    0b101: "important_development",
    0b011: "important_retention",
    0b001: "important_win_back",
    0b110: "general_value",
    0b100: "general_development",
    0b010: "general_retention",
    0b000: "general_win_back",
}
# (R score, F score) cells of the quintile RFM model; together they cover the 5 x 5 grid once.
_QUINTILE_CELLS = {
    "champions": ((5,), (4, 5)),
    "loyal": ((3, 4), (4, 5)),
    "potential_loyalists": ((4, 5), (2, 3)),
    "new": ((5,), (1,)),
    "promising": ((4,), (1,)),
    "need_attention": ((3,), (3,)),
    "about_to_sleep": ((3,), (1, 2)),
    "at_risk": ((1, 2), (3, 4)),
    "cant_lose": ((1, 2), (5,)),
    "hibernating": ((1, 2), (1, 2)),
}
_HOURS = tuple(f"{hour:02d}" for hour in range(24))


def quintile_segment(r_score: int, f_score: int) -> str:
    """The segment of one R x F cell."""
    for name, (rs, fs) in _QUINTILE_CELLS.items():
        if r_score in rs and f_score in fs:
            return name
    raise ValueError(f"no segment for R{r_score} F{f_score}")


@dataclass(frozen=True)
class ModelInfo:
    """What a model decides: its values (None when they come from the data) and their shape."""

    values: tuple[str, ...] | None
    cardinality: int
    # Compares a member with all members, so one member cannot be re-evaluated alone cheaply.
    population: bool = False


INFO: dict[str, ModelInfo] = {
    "rfm_mean_split": ModelInfo(tuple(_MEAN_SPLIT.values()), SINGLE, True),
    "rfm_quintiles": ModelInfo(tuple(_QUINTILE_CELLS), SINGLE, True),
    "lifecycle": ModelInfo(("new", "active", "silent", "churned"), SINGLE),
    "categories_bought": ModelInfo(None, MULTI),
    "category_preference": ModelInfo(None, MULTI),
    "interest": ModelInfo(None, MULTI),
    "repurchase_due": ModelInfo(("due", "not_due"), SINGLE),
    "preferred_send_hour": ModelInfo(_HOURS, SINGLE),
}


def info(model: models_pb2.Model) -> ModelInfo | None:
    which = model.WhichOneof("model")
    return INFO[which] if which else None


# --- validation --------------------------------------------------------------------------------


def validate(model: models_pb2.Model, v: Violations, path: str) -> None:
    """Adds a violation for every parameter out of range, named by its path."""
    which = model.WhichOneof("model")
    if which is None:
        v.add(path, f"is required for MODEL dimensions: one of {', '.join(INFO)}")
        return
    params = getattr(model, which)
    p = f"{path}.{which}"
    if hasattr(params, "window_days"):
        low, high = (1, MAX_INTEREST_DAYS) if which == "interest" else (0, MAX_WINDOW_DAYS)
        if not low <= params.window_days <= high:
            v.add(
                f"{p}.window_days", f"must be between {low} and {high}" + ("" if low else " (0: all history)")
            )
    check = _CHECKS.get(which)
    if check is not None:
        check(params, v, p)


def _check_lifecycle(params: models_pb2.Lifecycle, v: Violations, p: str) -> None:
    if not 1 <= params.new_days <= params.active_days < params.churn_days <= MAX_WINDOW_DAYS:
        v.add(p, f"needs 1 <= new_days <= active_days < churn_days <= {MAX_WINDOW_DAYS}")


def _check_preference(params: models_pb2.CategoryPreference, v: Violations, p: str) -> None:
    if not 1 <= params.top_n <= MAX_TOP_N:
        v.add(f"{p}.top_n", f"must be between 1 and {MAX_TOP_N}")


def _check_interest(params: models_pb2.Interest, v: Violations, p: str) -> None:
    kinds = set(facts_pb2.EventKind.values()) - {facts_pb2.EVENT_KIND_UNSPECIFIED}
    if not 1 <= len(params.event_kinds) <= len(kinds) or any(k not in kinds for k in params.event_kinds):
        v.add(f"{p}.event_kinds", f"must list 1-{len(kinds)} known event kinds")


def _check_repurchase(params: models_pb2.RepurchaseDue, v: Violations, p: str) -> None:
    if not 2 <= params.min_orders <= 100:
        v.add(f"{p}.min_orders", "must be between 2 and 100")
    if not 50 <= params.tolerance_percent <= 500:
        v.add(f"{p}.tolerance_percent", "must be between 50 and 500")


def _check_send_hour(params: models_pb2.PreferredSendHour, v: Violations, p: str) -> None:
    if zones.find(params.default_time_zone) is None:
        v.add(f"{p}.default_time_zone", "must be an IANA time zone such as Asia/Shanghai")


_CHECKS: dict[str, Callable[[Any, Violations, str], None]] = {
    "lifecycle": _check_lifecycle,
    "category_preference": _check_preference,
    "interest": _check_interest,
    "repurchase_due": _check_repurchase,
    "preferred_send_hour": _check_send_hour,
}


# --- compilation -------------------------------------------------------------------------------


@dataclass
class _Query:
    params: list[Any] = field(default_factory=list)
    member_filter: str = ""
    # The placeholder of the dimension whose kept figures (tagging.rfm_figures) an RFM model ranks
    # instead of computing them from the orders; "" computes them.
    kept: str = ""

    def param(self, value: Any, cast: str) -> str:
        self.params.append(value)
        return f"${len(self.params)}::{cast}"

    def only_members(self, column: str) -> str:
        """` AND column = ANY($2)` when evaluating chosen members, else nothing."""
        return f" AND {column} = ANY({self.member_filter})" if self.member_filter else ""

    def since(self, column: str, window_days: int, now: str) -> str:
        """` AND column > now - window` for a window, nothing for all history."""
        if not window_days:
            return ""
        return f" AND {column} > {now} - make_interval(days => {self.param(window_days, 'int')})"


# Orders that count: paid by `now` and not fully refunded; `net` is what was kept. Shared with the
# recompute's moments (due_store.py), which must count exactly these.
COUNTED_ORDERS = """SELECT o.member_id, o.paid_time, o.amount_minor - o.refunded_amount_minor AS net
    FROM tagging.orders o
    WHERE o.paid_time <= {now} AND NOT (o.amount_minor > 0 AND o.refunded_amount_minor >= o.amount_minor)"""
_DAYS = "floor(extract(epoch FROM {now} - {t}) / 86400)"


@dataclass(frozen=True)
class _Body:
    # A subquery with `member_id`, `tag_values` and the figure columns, at most one row per member.
    sql: str
    figures: dict[str, str]
    inputs: frozenset[Input]


def compile_model(model: models_pb2.Model, *, filtered: bool, kept: str = "") -> CompiledDimension:
    """Compiles a model into one query; `$1` is the evaluation time, `$2` the members when `filtered`.
    `kept`: an RFM model ranks the figures kept for that dimension against thresholds given later
    (see `KeptFigures`), a row for each member that has them."""
    q = _Query()
    now = q.param(None, "timestamptz")
    if filtered:
        q.member_filter = q.param([], "text[]")
    if kept:
        assert model.WhichOneof("model") in _RFM, "only RFM models keep figures"
        q.kept = q.param(kept, "text")
    which = model.WhichOneof("model")
    assert which is not None, "validate() runs before compile"
    if which in _RFM:
        body = _rfm(which, getattr(model, which), q, now)
    else:
        body = _COMPILERS[which](getattr(model, which), q, now)
    figures = "".join(f", x.{column}" for column in body.figures)
    if kept:
        # A row per member with figures only: one without holds no value, and the recompute closes
        # what it held all the same. Joining every member cost 0.8 s of 3.5 on 1M.
        sql = f"SELECT x.member_id, x.tag_values, {now} AS evaluated_at{figures}\nFROM ({body.sql}) AS x"
        return CompiledDimension(sql, tuple(q.params), body.figures, q.member_filter, body.inputs)
    where = f"WHERE m.member_id = ANY({q.member_filter})" if q.member_filter else ""
    sql = (
        f"SELECT m.member_id, COALESCE(x.tag_values, ARRAY[]::text[]) AS tag_values, "
        f"{now} AS evaluated_at{figures}\n"
        f"FROM tagging.members m\nLEFT JOIN ({body.sql}) AS x ON x.member_id = m.member_id\n{where}"
    )
    return CompiledDimension(sql, tuple(q.params), body.figures, q.member_filter, body.inputs)


@dataclass(frozen=True)
class KeptFigures:
    """How a population model (RFM) keeps each member's own figures between recomputes
    (tagging.rfm_figures). A member's figures move only with their facts and their orders' window,
    so a recompute evaluates the orders of the members whose figures may have moved and ranks
    from what is kept, instead of aggregating every order of the population.

    A member's segment is a function of its own figures, the evaluation time and the population's
    thresholds (means or quintile bounds) alone. So the recompute first computes the thresholds over
    everyone's kept figures (`thresholds_sql`), then ranks members against them (`ranking`, or
    `ranking_of` for chosen members); a member whose figures did not move holds another segment
    only if the thresholds or its recency crossed it (`thresholds_sql`'s `moved`).

    `sql` gives `member_id, last_paid, frequency, monetary` from the facts, `$1` the evaluation
    time, `$2` the members (NULL: all)."""

    sql: str
    params: tuple[Any, ...]
    # How the figures of members with no new facts moved between two evaluations: see `_moves`.
    moves_sql: str
    moves_params: tuple[Any, ...]
    # `$1` the evaluation time, `$2` the dimension, `$3` and `$4` the time and thresholds of the
    # previous ranking (NULL: none): one row of the thresholds now (`t`, numeric[]) and the members
    # whose segment differs between the two rankings of their kept figures (`moved`, NULL without a
    # previous ranking).
    thresholds_sql: str
    ranking: CompiledDimension
    ranking_of: CompiledDimension

    def args(self, now: Any, member_ids: list[str] | None) -> list[Any]:
        return [now, member_ids, *self.params[2:]]

    def moves_args(self, now: Any, then: Any, excluded: list[str]) -> list[Any]:
        return [now, then, excluded, *self.moves_params[3:]]

    def ranked(self, thresholds: Sequence[Any], member_ids: list[str] | None = None) -> CompiledDimension:
        """The ranking against `thresholds`, of the members chosen (None: everyone's kept figures)."""
        compiled = self.ranking if member_ids is None else self.ranking_of
        at = compiled.params.index(_THRESHOLDS)
        params = (*compiled.params[:at], list(thresholds), *compiled.params[at + 1 :])
        return replace(compiled, params=params)


# The value of a kept ranking's thresholds parameter until `KeptFigures.ranked` gives it: asyncpg
# refuses it, so a ranking run without thresholds fails rather than ranking against none.
_THRESHOLDS = object()


def kept_figures(model: models_pb2.Model, dimension: str) -> KeptFigures | None:
    """The kept figures of a model of `dimension`; None for a model that keeps none."""
    which = model.WhichOneof("model")
    if which not in _RFM:
        return None
    params = getattr(model, which)
    q = _Query()
    now = q.param(None, "timestamptz")
    members = q.param(None, "text[]")
    sql = _rfm_figures(params, q, now, f" AND ({members} IS NULL OR c.member_id = ANY({members}))")
    moves = _Query()
    moves_sql = _moves(params, moves, moves.param(None, "timestamptz"), moves.param(None, "timestamptz"))
    return KeptFigures(
        sql,
        tuple(q.params),
        moves_sql,
        tuple(moves.params),
        _moved_sql(_RFM[which]),
        compile_model(model, filtered=False, kept=dimension),
        compile_model(model, filtered=True, kept=dimension),
    )


def _rfm_figures(params: Any, q: _Query, now: str, only: str = "") -> str:
    """Each member's own figures: the latest counted order, and the counted orders within the
    window and their net; a member with no counted order has no row."""
    window = q.since("c.paid_time", params.window_days, now).removeprefix(" AND ") or "true"
    return f"""SELECT c.member_id, max(c.paid_time) AS last_paid,
            count(*) FILTER (WHERE {window}) AS frequency,
            COALESCE(sum(c.net) FILTER (WHERE {window}), 0) AS monetary
        FROM ({COUNTED_ORDERS.format(now=now)}) AS c WHERE true{only} GROUP BY c.member_id"""


def _moves(params: Any, q: _Query, now: str, then: str) -> str:
    """Per member with a counted order whose place in the window differs at `now` and at `then`
    (earlier), except the members given next (text[]): the latest such order paid after `then`
    (`entered`, NULL for none) and what the orders add to the frequency and monetary figures. With
    no new facts, a member's orders and their refunds are those of `then`, so the figures at `now`
    are those of `then` moved by these. Only orders paid between the two times or between the two
    windows' starts can move, two ranges of the orders' paid-time index (a day each, 54k orders on
    the 1M bench, where evaluating the due members from all their orders read 1.3M)."""
    excluded = q.param([], "text[]")
    days = q.param(params.window_days, "int") if params.window_days else ""

    def start(t: str) -> str:
        return f"{t} - make_interval(days => {days})"

    def inside(t: str) -> str:
        within = f" AND c.paid_time > {start(t)}" if days else ""
        return f"(c.paid_time <= {t}{within})::int"

    counted = COUNTED_ORDERS.format(now=now)
    ranges = [f"{counted} AND o.paid_time > {then}"]
    if days:
        # Orders past `then` are the first range's already.
        left = f"o.paid_time > {start(then)} AND o.paid_time <= least({start(now)}, {then})"
        ranges.append(f"{counted} AND {left}")
    union = "\n            UNION ALL ".join(ranges)
    return f"""SELECT c.member_id, max(c.paid_time) FILTER (WHERE c.paid_time > {then}) AS entered,
            sum({inside(now)} - {inside(then)}) AS frequency,
            sum(c.net * ({inside(now)} - {inside(then)})) AS monetary
        FROM ({union}) AS c
        WHERE NOT EXISTS (SELECT 1 FROM unnest({excluded}) AS x(member_id) WHERE x.member_id = c.member_id)
        GROUP BY c.member_id"""


def _base(figures: str, now: str) -> str:
    """R (days since the latest counted order), F and M of each row of `figures`."""
    return f"""SELECT b.member_id, b.last_paid, {_DAYS.format(now=now, t="b.last_paid")} AS r,
            b.frequency AS f, b.monetary AS m
        FROM ({figures}) AS b"""


def _kept(dimension: str, only: str = "") -> str:
    return f"""SELECT k.member_id, k.last_paid, k.frequency, k.monetary FROM tagging.rfm_figures k
        WHERE k.dimension = {dimension}{only}"""


@dataclass(frozen=True)
class _Rfm:
    """How an RFM model ranks `base` (member_id, last_paid, r, f, m): the population's thresholds
    (`thresholds`, a numeric[] over `base` and the CTEs `ctes` define), and a member's cell of
    `cells` and figures given them."""

    cells: tuple[str, ...]
    ctes: str
    thresholds: str
    # (R, the row of base, thresholds) -> the member's 1-based cell.
    cell: Callable[[str, str, str], str]
    # (the row of base, thresholds) -> the figures shown after the member's R, F and M, by column.
    figures: Callable[[str, str], dict[str, str]]


def _mean_split_cell(r: str, b: str, t: str) -> str:
    return f"1 + 4 * ({r} < {t}[1])::int + 2 * ({b}.f > {t}[2])::int + ({b}.m > {t}[3])::int"


def _mean_split_figures(b: str, t: str) -> dict[str, str]:
    return {
        "recency_mean": f"{t}[1]",
        "frequency_mean": f"{t}[2]",
        "monetary_mean": f"{t}[3]",
    }


def _bounds(figure: str) -> str:
    """The least value of `figure` (an expression over `base`) reaching each score 2-5, where
    score = ceil(5 * cume_dist) in exact integer arithmetic: with c members at or below the value
    (peers included) of n, (5c + n - 1) / n. The score of any value is then 1 + the bounds at or
    below it (width_bucket), ties sharing one. Counted per distinct value, not per member: a year
    holds a few hundred recency days and order counts, so two of the three figures group into a few
    hundred rows instead of sorting every member (a window over 744k members sorted them three
    times: 2.0 s against 1.0 s). No join of members to values: planned on the statistics of figures
    just written (none, on a first recompute), one ran as a nested loop of 742k by 90k."""
    bound = ", ".join(f"min(v.x) FILTER (WHERE v.score >= {k})" for k in range(2, 6))
    return f"""(SELECT ARRAY[{bound}]::numeric[]
        FROM (SELECT g.x, ((5 * (sum(g.c) OVER (ORDER BY g.x))::bigint + t.n - 1) / t.n)::int AS score
              FROM (SELECT {figure} AS x, count(*) AS c FROM base b GROUP BY 1) AS g
              CROSS JOIN total t) AS v)"""


def _score(x: str, t: str, figure: int) -> str:
    """The quintile score of `x` against the bounds of the `figure`-th figure (0: R, 1: F, 2: M)."""
    return f"1 + width_bucket({x}, {t}[{4 * figure + 1}:{4 * figure + 4}])"


def _quintile_cell(r: str, b: str, t: str) -> str:
    # Recency ranks the most recent highest: its bounds are of -R.
    return f"({_score(f'-{r}', t, 0)} - 1) * 5 + {_score(f'{b}.f', t, 1)}"


def _quintile_figures(b: str, t: str) -> dict[str, str]:
    return {
        "r_score": _score(f"-{b}.r", t, 0),
        "f_score": _score(f"{b}.f", t, 1),
        "m_score": _score(f"{b}.m", t, 2),
    }


_RFM: dict[str, _Rfm] = {
    "rfm_mean_split": _Rfm(
        tuple(_MEAN_SPLIT[bits] for bits in range(8)),
        "",
        "(SELECT ARRAY[avg(b.r), avg(b.f), avg(b.m)] FROM base b)",
        _mean_split_cell,
        _mean_split_figures,
    ),
    "rfm_quintiles": _Rfm(
        tuple(quintile_segment(r, f) for r in range(1, 6) for f in range(1, 6)),
        # Counted once: inside each bound's subquery, a plan guessing one row of figures re-counted
        # all 744k for every distinct value (60 s a figure).
        "total AS MATERIALIZED (SELECT count(*) AS n FROM base),",
        f"{_bounds('-b.r')} || {_bounds('b.f')} || {_bounds('b.m')}",
        _quintile_cell,
        _quintile_figures,
    ),
}


def _stats(rfm: _Rfm) -> str:
    """The CTE `stats`: the thresholds `t` of the population in `base`, computed once whichever side
    of the join a plan puts them on."""
    return f"{rfm.ctes}\n        stats AS MATERIALIZED (SELECT {rfm.thresholds} AS t)"


def _rfm(which: str, params: Any, q: _Query, now: str) -> _Body:
    """An RFM model over every member's figures from the facts, or over the kept figures (`q.kept`)
    against thresholds given as a parameter."""
    rfm = _RFM[which]
    cells = q.param(list(rfm.cells), "text[]")
    if q.kept:
        # Chosen members are looked up by key (their filter is in `base`): the thresholds are given.
        base = _base(_kept(q.kept, q.only_members("k.member_id")), now)
        stats = f"stats AS (SELECT {q.param(_THRESHOLDS, 'numeric[]')} AS t)"
        only = ""
    else:
        base = _base(_rfm_figures(params, q, now), now)
        stats = _stats(rfm)
        only = q.only_members("b.member_id")
    own = {"recency_days": "b.r", "frequency": "b.f", "monetary_minor": "b.m"}
    figures = {**own, **rfm.figures("b", "s.t")}
    sql = f"""WITH base AS ({base}),
        {stats}
        SELECT b.member_id, ARRAY[({cells})[{rfm.cell("b.r", "b", "s.t")}]] AS tag_values,
            {", ".join(f"{expr} AS {name}" for name, expr in figures.items())}
        FROM base b CROSS JOIN stats s
        WHERE true{only}"""
    return _Body(sql, {name: name for name in figures}, frozenset({Input.ORDERS}))


def _moved_sql(rfm: _Rfm) -> str:
    """KeptFigures.thresholds_sql: the thresholds over everyone's kept figures now, and the members
    whose segment moved since the previous ranking though their figures did not: their R read at
    both times against the thresholds of each (the cell index stands for the segment)."""
    then = _DAYS.format(now="$3::timestamptz", t="b.last_paid")
    moved = f"{rfm.cell('b.r', 'b', 's.t')} <> {rfm.cell(f'({then})', 'b', '($4::numeric[])')}"
    return f"""WITH base AS ({_base(_kept("$2::text"), "$1::timestamptz")}),
        {_stats(rfm)}
        SELECT s.t,
            CASE WHEN $3::timestamptz IS NOT NULL THEN ARRAY(
                SELECT b.member_id FROM base b WHERE {moved}) END AS moved
        FROM stats s"""


def _lifecycle(params: models_pb2.Lifecycle, q: _Query, now: str) -> _Body:
    new, active, churn = (
        q.param(days, "int") for days in (params.new_days, params.active_days, params.churn_days)
    )

    def within(column: str, days: str) -> str:
        return f"{column} > {now} - make_interval(days => {days})"

    sql = f"""SELECT m.member_id, array_remove(ARRAY[CASE
                WHEN a.n = 1 AND {within("a.last_paid", new)} THEN 'new'
                WHEN a.n IS NULL AND {within("m.register_time", new)} THEN 'new'
                WHEN {within("a.last_paid", active)} THEN 'active'
                WHEN {within("a.last_paid", churn)} THEN 'silent'
                WHEN a.n > 0 THEN 'churned' END], NULL) AS tag_values,
            COALESCE(a.n, 0) AS order_count,
            {_DAYS.format(now=now, t="a.last_paid")} AS days_since_last_order,
            {_DAYS.format(now=now, t="m.register_time")} AS days_since_registration
        FROM tagging.members m
        LEFT JOIN (SELECT c.member_id, count(*) AS n, max(c.paid_time) AS last_paid
                   FROM ({COUNTED_ORDERS.format(now=now)}{q.only_members("o.member_id")}) AS c
                   GROUP BY c.member_id) AS a ON a.member_id = m.member_id
        WHERE true{q.only_members("m.member_id")}"""
    figures = ["order_count", "days_since_last_order", "days_since_registration"]
    return _Body(sql, {name: name for name in figures}, frozenset({Input.ORDERS, Input.PROFILE}))


# A line bought and not (wholly) returned, with a category; shared with due_store.py.
KEPT_LINE = "l.quantity > l.refunded_quantity AND l.category <> ''"


def _kept_lines(params: Any, q: _Query, now: str) -> str:
    """Order lines bought and not (wholly) returned, in the window, with a category."""
    return f"""SELECT l.member_id, left(l.category, {MAX_VALUE}) AS category,
            (l.quantity - l.refunded_quantity) * l.unit_price_minor AS spend
        FROM tagging.order_lines l
        WHERE l.paid_time <= {now}{q.since("l.paid_time", params.window_days, now)}
          AND {KEPT_LINE}{q.only_members("l.member_id")}"""


def _categories_bought(params: models_pb2.CategoriesBought, q: _Query, now: str) -> _Body:
    sql = f"""SELECT k.member_id, array_agg(DISTINCT k.category ORDER BY k.category) AS tag_values,
            count(DISTINCT k.category) AS category_count
        FROM ({_kept_lines(params, q, now)}) AS k GROUP BY k.member_id"""
    return _Body(sql, {"category_count": "category_count"}, frozenset({Input.ORDERS}))


def _category_preference(params: models_pb2.CategoryPreference, q: _Query, now: str) -> _Body:
    top = q.param(params.top_n, "int")
    sql = f"""SELECT r.member_id, array_agg(r.category ORDER BY r.rank) AS tag_values,
            sum(r.spend) AS top_spend_minor
        FROM (SELECT s.member_id, s.category, s.spend,
                     row_number() OVER (PARTITION BY s.member_id ORDER BY s.spend DESC, s.category) AS rank
              FROM (SELECT k.member_id, k.category, sum(k.spend) AS spend
                    FROM ({_kept_lines(params, q, now)}) AS k GROUP BY k.member_id, k.category) AS s
              WHERE s.spend > 0) AS r
        WHERE r.rank <= {top}
        GROUP BY r.member_id"""
    return _Body(sql, {"top_spend_minor": "top_spend_minor"}, frozenset({Input.ORDERS}))


def _interest(params: models_pb2.Interest, q: _Query, now: str) -> _Body:
    kinds = q.param(sorted(set(params.event_kinds)), "smallint[]")
    event_window = q.since("e.occur_time", params.window_days, now)
    line_window = q.since("l.paid_time", params.window_days, now)
    sql = f"""SELECT e.member_id, array_agg(DISTINCT left(e.category, {MAX_VALUE})) AS tag_values,
            count(*) AS interest_events
        FROM tagging.events e
        WHERE e.kind = ANY({kinds}) AND e.category <> '' AND e.occur_time <= {now}{event_window}
          {q.only_members("e.member_id")}
          AND NOT EXISTS (
              SELECT 1 FROM tagging.order_lines l
              WHERE l.member_id = e.member_id AND l.category = e.category AND l.paid_time <= {now}
                {line_window} AND l.quantity > l.refunded_quantity{q.only_members("l.member_id")})
        GROUP BY e.member_id"""
    return _Body(sql, {"interest_events": "interest_events"}, frozenset({Input.EVENTS, Input.ORDERS}))


def _repurchase_due(params: models_pb2.RepurchaseDue, q: _Query, now: str) -> _Body:
    minimum, tolerance = q.param(params.min_orders, "int"), q.param(params.tolerance_percent, "numeric")
    window = q.since("o.paid_time", params.window_days, now)
    sql = f"""SELECT a.member_id,
            ARRAY[CASE WHEN a.since_days >= a.cycle_days * {tolerance} / 100 THEN 'due' ELSE 'not_due' END]
                AS tag_values,
            a.n AS order_count, round(a.cycle_days, 1) AS cycle_days,
            floor(a.since_days) AS days_since_last_order
        FROM (SELECT c.member_id, count(*) AS n,
                     extract(epoch FROM max(c.paid_time) - min(c.paid_time)) / 86400 / (count(*) - 1)
                         AS cycle_days,
                     extract(epoch FROM {now} - max(c.paid_time)) / 86400 AS since_days
              FROM ({COUNTED_ORDERS.format(now=now)}{window}{q.only_members("o.member_id")}) AS c
              GROUP BY c.member_id
              HAVING count(*) >= {minimum}) AS a"""
    figures = ["order_count", "cycle_days", "days_since_last_order"]
    return _Body(sql, {name: name for name in figures}, frozenset({Input.ORDERS}))


def _preferred_send_hour(params: models_pb2.PreferredSendHour, q: _Query, now: str) -> _Body:
    fallback = q.param(params.default_time_zone, "text")
    order_window = q.since("o.paid_time", params.window_days, now)
    click_window = q.since("e.occur_time", params.window_days, now)
    click = int(facts_pb2.EVENT_KIND_CLICK)
    # Zones are looked up in PostgreSQL's own list once, so a zone Python knows and PostgreSQL does
    # not falls back instead of failing the statement.
    sql = f"""WITH zones AS MATERIALIZED (SELECT name FROM pg_timezone_names),
        moments AS (
            SELECT o.member_id, o.paid_time AS t FROM ({COUNTED_ORDERS.format(now=now)}{order_window}
                {q.only_members("o.member_id")}) AS o
            UNION ALL
            SELECT e.member_id, e.occur_time FROM tagging.events e
            WHERE e.kind = {click} AND e.occur_time <= {now}{click_window}{q.only_members("e.member_id")}),
        hours AS (
            SELECT t.member_id,
                   extract(hour FROM t.t AT TIME ZONE COALESCE(z.name, {fallback}))::int AS hour,
                   count(*) AS n
            FROM moments t
            JOIN tagging.members mm ON mm.member_id = t.member_id{q.only_members("mm.member_id")}
            LEFT JOIN zones z ON z.name = mm.time_zone
            GROUP BY 1, 2)
        SELECT DISTINCT ON (h.member_id) h.member_id, ARRAY[lpad(h.hour::text, 2, '0')] AS tag_values,
            h.n AS moments_at_hour
        FROM hours h ORDER BY h.member_id, h.n DESC, h.hour"""
    return _Body(sql, {"moments_at_hour": "moments_at_hour"}, frozenset({Input.ORDERS, Input.EVENTS}))


_COMPILERS: dict[str, Callable[[Any, _Query, str], _Body]] = {
    "lifecycle": _lifecycle,
    "categories_bought": _categories_bought,
    "category_preference": _category_preference,
    "interest": _interest,
    "repurchase_due": _repurchase_due,
    "preferred_send_hour": _preferred_send_hour,
}
