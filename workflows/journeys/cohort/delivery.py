"""One batch of a cohort: what its due members do (a Plan, plain Python), written set-based, then
the sends it claimed handed to the providers (Delivery).

A batch goes in parts of at most PART_SIZE members, a few at a time. A part claims its sends in
the message log before any provider is called, in one transaction that takes its members' send
locks (so the daily cap holds against member journeys and other broadcasts sending at the same
time): quiet hours and unusable channels
are decided per member, the daily cap and the channels' per-minute windows per chunk. Claimed rows
are `sending` for batch endpoints (idempotent per message id: a row found again by a retry is sent
again under the same id, and the provider delivers it once) and `queued` for channels taking one
message at a time (moved to `sending` just before the provider gets it; found again in `sending`,
the outcome is unknown and it is never sent again). A claimed row keeps the subject and body
rendered for its member, and every delivery of it sends that text (a retry after the member's data
changed too). Any set of a batch's parts is a batch, so a
crash between parts loses nothing: the retry delivers what its parts claimed, and the members of
parts never written are still due for the next batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from temporalio import activity
from temporalio.exceptions import ApplicationError

from runtime import metrics
from runtime.db import Connection, Database
from workflows.journeys import local_time, message_log, steps, templates
from workflows.journeys.channels.base import (
    BatchChannel,
    BatchResult,
    NotDelivered,
    OutcomeUnknown,
    Rejected,
    Session,
)
from workflows.journeys.channels.config import ChannelSettings
from workflows.journeys.cohort import store
from workflows.journeys.definition import JourneyDefinition, Step
from workflows.journeys.payloads import SendOutcome
from workflows.journeys.sending import Recipient, Sender, outgoing

# Members of one part of a batch (one claim transaction, holding their send locks) at most.
PART_SIZE = 1000
# Sends of a message at most before a batch gives up on it (not taken: failed; no answer: unknown).
MAX_ATTEMPTS = 8
UNSETTLED = ("queued", "sending", "retry")
# A delivery outcome as journey_sends_total counts it: a row left `sending` is sent again (retry).
_SENT = {"sending": "retry"}
EARLIER_ATTEMPT_DIED = "an earlier attempt ended while the provider had the message; not sent again"


@dataclass(frozen=True)
class Claim:
    """A send a batch holds: the member, the position of its send step and the channel chosen."""

    member_id: str
    position: int
    channel: str


@dataclass(frozen=True)
class Move:
    """A member going on: to `position` (the number of steps: past the last), due at `due_time`;
    `arrived`: counted as entered there already; `split_arm`: a split's arm to record, or ''."""

    member_id: str
    position: int
    due_time: dt.datetime
    arrived: bool
    split_arm: str = ""


@dataclass(frozen=True)
class Candidate:
    member_id: str
    position: int
    channel: str
    day: dt.date
    tz: ZoneInfo
    recipient: Recipient = field(repr=False)


@dataclass
class Plan:
    """What a batch does to its due members, step by step, before anything is written. Each step
    kind decides for one member (`steps.StepKind.plan`, the same kinds member journeys run); the
    plan is what they see of the batch (`steps.BatchRun`)."""

    definition: JourneyDefinition
    cohort_id: int
    now: dt.datetime
    sender: Sender
    # The batch's members' own send hours (their `preferred_send_hour` tag), for wait_until_hour
    # steps that ask for it; members without one are absent.
    preferred_hours: Mapping[str, int] = field(default_factory=dict)
    # The channels the tenant's sends may use (Sender.ready); None: the process's alone.
    ready: frozenset[str] | None = None
    figures: Counter[str] = field(default_factory=Counter)
    # Members going on (position: the number of steps when past the last).
    moves: list[Move] = field(default_factory=list)
    # (member, position, detail, local day): sends skipped for good (a `skipped` row each).
    skips: list[tuple[str, int, str, dt.date]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    # Position of an add_tag step -> its treated members.
    tags: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    # (member, step id) -> the (subject, body) claimed for it, which its delivery sends.
    rendered: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # The kind of each step, by position (asked for once per member of a batch).
    kinds: list[steps.StepKind] = field(init=False)

    def __post_init__(self) -> None:
        self.kinds = [steps.of(step) for step in self.definition.steps]

    def add(self, due: store.Due, recipient: Recipient | None, tz: ZoneInfo) -> None:
        if due.position >= len(self.definition.steps):
            self.leave(due.member_id)  # the wait that ended its steps is over
            return
        step = self.definition.steps[due.position]
        if not due.arrived:  # got here after a wait: it enters the step now
            self.count(step.id, "entered")
        kind = self.kinds[due.position]
        if kind.treats and due.holdout:
            self.count(step.id, "held_out")  # no send or tag for the holdout
            self.go(due.member_id, due.position + 1, due.due_time)
            return
        kind.plan(step, self, due, recipient or Recipient(member_id=due.member_id, found=False), tz)

    # What a step sees of the batch (steps.BatchRun).

    def count(self, step_id: str, what: str, n: int = 1) -> None:
        self.figures[f"step:{step_id}:{what}"] += n

    def leave(self, member: str) -> None:
        """Past the last step now: the member waits for nothing but the goal's window."""
        self.moves.append(Move(member, len(self.definition.steps), store.WALKED, True))

    def tag(self, position: int, member: str) -> None:
        self.tags[position].append(member)

    def preferred_hour(self, member: str) -> int | None:
        return self.preferred_hours.get(member)

    def route(self, due: store.Due, step: Step, recipient: Recipient, tz: ZoneInfo) -> None:
        """A send: skipped for good, deferred, or a candidate for the part's claim."""
        assert step.send is not None
        d = self.definition
        routed = self.sender.route(
            step.send.channel, d.channels, d.quiet_hours, recipient, self.now, tz, self.ready
        )
        day = local_time.local_day(self.now, tz)
        if isinstance(routed, SendOutcome):
            if routed.status == "skipped":
                self.skips.append((due.member_id, due.position, routed.detail, day))
                self.count(step.id, "skipped")
                self.go(due.member_id, due.position + 1, self.now)
            else:
                assert routed.until is not None
                self.defer(due.member_id, due.position, routed.until, routed.detail)
            return
        self.candidates.append(Candidate(due.member_id, due.position, routed, day, tz, recipient))

    def tagged(self, step: Step, member_ids: Sequence[str], failed: str) -> None:
        p = self.definition.step_index()[step.id]
        self.count(step.id, "failed" if failed else "done", len(member_ids))
        for member in member_ids:
            self.go(member, p + 1, self.now)

    def defer(self, member: str, position: int, until: dt.datetime, reason: str) -> None:
        """Not dropped: the member stays at the step, due again at `until`."""
        step = self.definition.steps[position]
        self.count(step.id, "deferred")
        self.figures[f"deferral:{reason}"] += 1
        self.moves.append(Move(member, position, until, True))

    def go(self, member: str, position: int, due: dt.datetime, split_arm: str = "") -> None:
        """On to a step, due at `due`: it enters the step now, or when it gets there after a wait.
        `split_arm` (`{step id}:{arm}`) is recorded on the member by the same write. Past the last
        step a member is done walking at `due` (a trailing wait keeps it walking until then, as a
        member journey sleeps through it)."""
        steps = self.definition.steps
        if position >= len(steps):
            walked = store.WALKED if due <= self.now else due
            self.moves.append(Move(member, len(steps), walked, True, split_arm))
            return
        arrived = due <= self.now
        if arrived:
            self.count(steps[position].id, "entered")
        self.moves.append(Move(member, position, due, arrived, split_arm))

    def index(self, target: str, position: int) -> int:
        return self.definition.step_index()[target] if target else position + 1

    def take_moves(self) -> list[Move]:
        moves, self.moves = self.moves, []
        return moves


async def apply_moves(conn: Connection, cohort_id: int, moves: Sequence[Move]) -> None:
    if moves:
        await store.move(
            conn,
            cohort_id,
            [m.member_id for m in moves],
            [m.position for m in moves],
            [m.due_time for m in moves],
            [m.arrived for m in moves],
            [m.split_arm for m in moves],
        )


async def claimed_rows(
    conn: Connection,
    tenant_id: str,
    cohort: store.Cohort,
    definition: JourneyDefinition,
    claims: Sequence[Claim],
) -> dict[tuple[str, str], tuple[str, str, int]]:
    """(member, step) -> (status, channel, attempts) of the claims' message log rows."""
    steps = definition.steps
    return await message_log.rows_of(
        conn,
        tenant_id,
        cohort.journey_run,
        [c.member_id for c in claims],
        [steps[c.position].id for c in claims],
    )


class Delivery:
    def __init__(self, db: Database, sender: Sender, settings: ChannelSettings) -> None:
        self._db = db
        self._sender = sender
        self._settings = settings
        self._batched_channels: dict[str, bool] = {}

    # --- claiming ------------------------------------------------------------------------------

    async def claim(
        self, tenant_id: str, cohort: store.Cohort, seq: int, part: int, plan: Plan
    ) -> store.Batch:
        """Writes the part's plan and claims its sends, with the part's row, in one transaction.
        Members whose send is claimed go on to their next step at once (the call is repeated until
        its sends are settled, before any later batch is taken)."""
        async with store.transaction(self._db, tenant_id) as conn:
            await store.lock_batch(conn, cohort.cohort_id, seq, part)
            found = await store.get_batch(conn, cohort.cohort_id, seq, part)
            if found is not None:  # another attempt of this call got here first
                return found
            await self._write_plan(conn, tenant_id, cohort, plan)
            claims = await self._claim_chunk(conn, tenant_id, cohort, plan, plan.candidates)
            for c in claims:
                plan.go(c.member_id, c.position + 1, plan.now)
            await apply_moves(conn, cohort.cohort_id, plan.take_moves())
            state = "claimed" if claims else "done"
            claimed = [[c.member_id, c.position, c.channel] for c in claims]
            await store.save_batch(
                conn,
                tenant_id,
                cohort.cohort_id,
                seq,
                state,
                +plan.figures,
                {"claimed": claimed},
                plan.now,
                part,
            )
        return store.Batch(state, dict(+plan.figures), {"claimed": claimed})

    async def _write_plan(self, conn: Connection, tenant_id: str, cohort: store.Cohort, plan: Plan) -> None:
        steps = plan.definition.steps
        if plan.skips:
            members, positions, details, days = zip(*plan.skips, strict=True)
            await message_log.claim_many(
                conn,
                tenant_id,
                cohort.journey_run,
                plan.definition.key,
                message_log.Claims(
                    list(members),
                    [steps[p].id for p in positions],
                    [""] * len(members),
                    ["skipped"] * len(members),
                    list(days),
                    list(details),
                ),
                plan.now,
            )

    async def _claim_chunk(
        self, conn: Connection, tenant_id: str, cohort: store.Cohort, plan: Plan, chunk: Sequence[Candidate]
    ) -> list[Claim]:
        """The chunk's daily caps and channel windows, then its rows: claimed, or the member deferred."""
        if not chunk:
            return []
        definition, now = plan.definition, plan.now
        await message_log.lock_members(conn, tenant_id, [c.member_id for c in chunk])
        counted = await message_log.sent_on_many(
            conn, tenant_id, [c.member_id for c in chunk], [c.day for c in chunk]
        )
        by_channel: dict[str, list[Candidate]] = defaultdict(list)
        for c in chunk:
            if counted.get(c.member_id, 0) >= definition.frequency_cap:
                plan.defer(
                    c.member_id, c.position, local_time.next_local_midnight(now, c.tz), "frequency_cap"
                )
            else:
                by_channel[c.channel].append(c)
        claims: list[Candidate] = []
        for channel, group in sorted(by_channel.items()):
            granted = await message_log.take_window_slots(
                conn, tenant_id, channel, now, self._settings.rate(channel), len(group)
            )
            claims += group[:granted]
            for c in group[granted:]:
                plan.defer(
                    c.member_id, c.position, message_log.window_of(now) + message_log.WINDOW, "rate_limit"
                )
        if claims:
            steps = definition.steps
            texts = []
            for c in claims:
                send = steps[c.position].send
                assert send is not None
                text = templates.render(definition.templates[send.template], c.recipient.fields)
                plan.rendered[(c.member_id, steps[c.position].id)] = text
                texts.append(text)
            await message_log.claim_many(
                conn,
                tenant_id,
                cohort.journey_run,
                definition.key,
                message_log.Claims(
                    [c.member_id for c in claims],
                    [steps[c.position].id for c in claims],
                    [c.channel for c in claims],
                    ["sending" if self._batched(c.channel) else "queued" for c in claims],
                    [c.day for c in claims],
                    [""] * len(claims),
                    texts,
                ),
                now,
            )
        return [Claim(c.member_id, c.position, c.channel) for c in claims]

    def _batched(self, channel: str) -> bool:
        batched = self._batched_channels.get(channel)
        if batched is None:
            batched = self._batched_channels[channel] = isinstance(
                self._sender.channel(channel), BatchChannel
            )
        return batched

    # --- delivering ----------------------------------------------------------------------------

    async def deliver(
        self,
        tenant_id: str,
        cohort: store.Cohort,
        definition: JourneyDefinition,
        seq: int,
        part: int,
        claims: Sequence[Claim],
        recipients: Mapping[str, Recipient],
        now: dt.datetime,
        *,
        fresh: bool,
        figures: Mapping[str, int] | None = None,
        rendered: Mapping[tuple[str, str], tuple[str, str]] | None = None,
    ) -> store.Batch:
        """Hands the part's unsettled claims to their channels and records each outcome; raises a
        retryable error while some were not taken (or not answered), so Temporal sends them again.
        Returns the part with its figures (`figures`: the part's before, when `fresh`; `rendered`:
        the text its claim logged, when `fresh`, else read from the log)."""
        steps = definition.steps
        texts: Mapping[tuple[str, str], tuple[str, str]] = rendered or {}
        if fresh:  # claimed by this very call: the rows are as the claim wrote them
            rows = {
                (c.member_id, steps[c.position].id): (
                    "sending" if self._batched(c.channel) else "queued",
                    c.channel,
                    1,
                )
                for c in claims
            }
        else:
            async with store.transaction(self._db, tenant_id, readonly=True) as conn:
                rows = await claimed_rows(conn, tenant_id, cohort, definition, claims)
                texts = await message_log.texts_of(
                    conn,
                    tenant_id,
                    cohort.journey_run,
                    [c.member_id for c in claims],
                    [steps[c.position].id for c in claims],
                )
        batched: dict[str, list[Claim]] = defaultdict(list)
        single: dict[str, list[Claim]] = defaultdict(list)
        for c in claims:
            row = rows.get((c.member_id, steps[c.position].id))
            if row is not None and row[0] in UNSETTLED:
                (batched if self._batched(c.channel) else single)[c.channel].append(c)
        context = _Context(tenant_id, cohort, definition, seq, part, now, rows, texts, recipients, fresh)
        outcomes: list[_Outcome] = []
        try:
            for channel_name, pending in sorted(batched.items()):
                channel = self._sender.channel(channel_name)
                assert isinstance(channel, BatchChannel)
                for i in range(0, len(pending), channel.batch_limit):
                    outcomes += await self._send_batch(context, channel, pending[i : i + channel.batch_limit])
                    activity.heartbeat()
        except asyncio.CancelledError:
            # Stopped (at a heartbeat) after some requests were answered: what the providers said
            # is recorded before the call ends, or those messages would be settled as unknown.
            await _to_completion(self._record(context, outcomes))
            raise
        # The batch endpoints' outcomes in one transaction; it closes the part when nothing is left.
        await _to_completion(
            self._record(context, outcomes, done=fresh and not single and not context.unsettled)
        )
        for channel_name, pending in sorted(single.items()):
            async with self._sender.channel(channel_name).session() as session:
                for claim in pending:
                    await self._send_one(context, session, claim)
        if fresh and not single:
            if context.unsettled:
                raise ApplicationError(
                    f"{context.unsettled} messages of the batch are not settled yet", type="SendNotTaken"
                )
            return store.Batch("done", dict(Counter(figures or {}) + context.settled), {})
        return await self._close(context, claims)

    async def _send_batch(
        self, context: _Context, channel: BatchChannel, claims: Sequence[Claim]
    ) -> list[_Outcome]:
        """One request to the batch endpoint; the outcomes, to be recorded by the caller."""
        steps = context.definition.steps
        messages = []
        outcomes: list[_Outcome] = []
        for c in claims:
            recipient = context.recipients.get(c.member_id)
            step = steps[c.position]
            if recipient is None or not recipient.found:
                outcomes.append((c, "skipped", "member not found in tagging", "", False))
                continue
            assert step.send is not None
            template = context.definition.templates[step.send.template]
            text = context.texts.get((c.member_id, step.id))
            message = outgoing(template, recipient, c.channel, context.message_id(c), text, context.tenant_id)
            messages.append((c, message))
        results: list[BatchResult] = []
        if messages:
            try:
                results = await channel.deliver_batch([m for _, m in messages])
            except NotDelivered as error:
                results = [BatchResult(m.message_id, "retry", detail=str(error)) for _, m in messages]
            except Rejected as error:
                results = [BatchResult(m.message_id, "failed", detail=str(error)) for _, m in messages]
            except OutcomeUnknown as error:
                results = [BatchResult(m.message_id, "unknown", detail=str(error)) for _, m in messages]
        for (c, _), result in zip(messages, results, strict=True):
            status, attempts = context.rows[(c.member_id, steps[c.position].id)][0], context.attempts(c)
            resent = status == "retry" or not context.fresh
            outcome = result.status
            if outcome in ("retry", "unknown"):
                if attempts + int(resent) >= MAX_ATTEMPTS:
                    outcome = "failed" if outcome == "retry" else "unknown"
                    detail = f"{result.detail} (after {MAX_ATTEMPTS} attempts)"
                else:
                    outcome, detail = ("retry" if outcome == "retry" else "sending"), result.detail
                    context.unsettled += 1
            else:
                detail = result.detail
            outcomes.append((c, outcome, detail, result.provider_id, resent))
        return outcomes

    async def _send_one(self, context: _Context, session: Session, claim: Claim) -> None:
        steps = context.definition.steps
        step = steps[claim.position]
        status = context.rows[(claim.member_id, step.id)][0]
        if status == "sending":
            await self._record(context, [(claim, "unknown", EARLIER_ATTEMPT_DIED, "", False)])
            return
        recipient = context.recipients.get(claim.member_id)
        if recipient is None or not recipient.found:
            await self._record(context, [(claim, "skipped", "member not found in tagging", "", False)])
            return
        async with store.transaction(self._db, context.tenant_id) as conn:
            taken = await message_log.take(
                conn, context.tenant_id, context.cohort.journey_run, claim.member_id, step.id
            )
        if not taken:
            return  # another attempt of this call has it
        assert step.send is not None
        message = outgoing(
            context.definition.templates[step.send.template],
            recipient,
            claim.channel,
            context.message_id(claim),
            context.texts.get((claim.member_id, step.id)),
            context.tenant_id,
        )
        try:
            provider_id = await session.deliver(message)
        except NotDelivered as error:
            if context.attempts(claim) + int(status == "retry") >= MAX_ATTEMPTS:
                await self._record(
                    context, [(claim, "failed", f"{error} (after {MAX_ATTEMPTS} attempts)", "", False)]
                )
            else:
                context.unsettled += 1
                await self._record(context, [(claim, "retry", str(error), "", False)])
            return
        except Rejected as error:
            await self._record(context, [(claim, "failed", str(error), "", False)])
            return
        except OutcomeUnknown as error:
            await self._record(context, [(claim, "unknown", str(error), "", False)])
            return
        await _to_completion(self._record(context, [(claim, "sent", "", str(provider_id), False)]))

    async def _record(self, context: _Context, outcomes: Sequence[_Outcome], *, done: bool = False) -> None:
        """Writes the outcomes and adds the settled ones to the part's figures (closing it when
        `done`), in one transaction."""
        if not outcomes and not done:
            return
        steps = context.definition.steps
        settled: Counter[str] = Counter(
            f"step:{steps[c.position].id}:{status}" for c, status, *_ in outcomes if status not in UNSETTLED
        )
        async with store.transaction(self._db, context.tenant_id) as conn:
            await store.lock_batch(conn, context.cohort.cohort_id, context.seq, context.part)
            if outcomes:
                await message_log.record_many(
                    conn,
                    context.tenant_id,
                    context.cohort.journey_run,
                    message_log.Outcomes(
                        [c.member_id for c, *_ in outcomes],
                        [steps[c.position].id for c, *_ in outcomes],
                        [status for _, status, *_ in outcomes],
                        [detail for _, _, detail, *_ in outcomes],
                        [provider_id for *_, provider_id, _ in outcomes],
                        [resent for *_, resent in outcomes],
                    ),
                    context.now,
                )
            await store.add_batch_figures(
                conn, context.cohort.cohort_id, context.seq, context.part, settled, context.now, done=done
            )
        context.settled.update(settled)
        for c, status, *_ in outcomes:
            metrics.sent(context.tenant_id, context.definition.key, c.channel, _SENT.get(status, status))

    async def _close(self, context: _Context, claims: Sequence[Claim]) -> store.Batch:
        cohort_id, seq, part = context.cohort.cohort_id, context.seq, context.part
        async with store.transaction(self._db, context.tenant_id) as conn:
            await store.lock_batch(conn, cohort_id, seq, part)
            rows = await claimed_rows(conn, context.tenant_id, context.cohort, context.definition, claims)
            unsettled = sum(1 for row in rows.values() if row[0] in UNSETTLED)
            state, figures = await store.batch_figures(conn, cohort_id, seq, part)
            if not unsettled:
                state = "done"
                await store.set_batch_figures(conn, cohort_id, seq, part, state, figures, context.now)
        if unsettled:
            raise ApplicationError(
                f"{unsettled} messages of the batch are not settled yet", type="SendNotTaken"
            )
        return store.Batch(state, figures, {})

    async def settle(
        self,
        conn: Connection,
        tenant_id: str,
        cohort: store.Cohort,
        definition: JourneyDefinition,
        seq: int,
        part: int,
        claims: Sequence[Claim],
        now: dt.datetime,
    ) -> None:
        """Settles the claims of a batch a stopped broadcast left: queued (or certainly not taken)
        ones are skipped, ones the provider may have are unknown."""
        rows = await claimed_rows(conn, tenant_id, cohort, definition, claims)
        figures: Counter[str] = Counter()
        members, step_ids, statuses = [], [], []
        for (member_id, step_id), (status, _, _) in rows.items():
            if status in UNSETTLED:
                outcome = "unknown" if status == "sending" else "skipped"
                members.append(member_id)
                step_ids.append(step_id)
                statuses.append(outcome)
                figures[f"step:{step_id}:{outcome}"] += 1
        await message_log.record_many(
            conn,
            tenant_id,
            cohort.journey_run,
            message_log.Outcomes(
                members,
                step_ids,
                statuses,
                ["the broadcast was stopped"] * len(members),
                [""] * len(members),
                [False] * len(members),
            ),
            now,
        )
        _, settled = await store.batch_figures(conn, cohort.cohort_id, seq, part)
        await store.set_batch_figures(
            conn, cohort.cohort_id, seq, part, "done", Counter(settled) + figures, now
        )


# (claim, status, detail, provider id, sent again): what a delivery found out about one message.
_Outcome = tuple[Claim, str, str, str, bool]


@dataclass
class _Context:
    tenant_id: str
    cohort: store.Cohort
    definition: JourneyDefinition
    seq: int
    part: int
    now: dt.datetime
    # (member, step) -> (status, channel, attempts) when the delivery began.
    rows: Mapping[tuple[str, str], tuple[str, str, int]]
    # (member, step) -> the (subject, body) logged for it (rows logged without one: rendered now).
    texts: Mapping[tuple[str, str], tuple[str, str]]
    recipients: Mapping[str, Recipient]
    # Claimed by this very call: nothing of them was handed over before.
    fresh: bool
    unsettled: int = 0
    # Figures of the outcomes recorded by this call.
    settled: Counter[str] = field(default_factory=Counter)

    def message_id(self, claim: Claim) -> str:
        return f"{self.cohort.journey_run}/{claim.member_id}/{self.definition.steps[claim.position].id}"

    def attempts(self, claim: Claim) -> int:
        return self.rows[(claim.member_id, self.definition.steps[claim.position].id)][2]


async def _to_completion(work: Awaitable[None]) -> None:
    """Runs `work` to its end even when the caller is cancelled meanwhile, then passes the
    cancellation on: a transaction recording what a provider already answered must commit."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
