"""What a journey names that lives in other services, checked against them: audiences exist (and
are dynamic where the journey follows their entries and exits), tag dimensions exist, are active
and have the values named, `add_tag` writes a dimension an operator may set, and the coupon
templates `issue_coupon` issues from exist in the tasks service and are not retired. Also renders each
template for a sample member, which catches a placeholder that parses but cannot be formatted.

No gRPC here: `Catalog` is what the service's peers (peers.py) answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.errors import FieldViolation
from workflows.journeys import templates
from workflows.journeys.definition import COUPON_FIELDS, PROFILE_FIELDS, EventMatch, JourneyDefinition, Step

# Fields of the built-in sample profile, used when no sample member is named.
SAMPLE_PROFILE = {"nickname": "Alex", "city": "Shanghai", "level": "gold", "member_id": "sample-member"}
# The coupon fields every sample renders with (a sample member holds no coupon of the journey yet).
SAMPLE_COUPON = dict(zip(COUPON_FIELDS, ("SAMPLE0COUPON000", "100", "20", "2026-12-31"), strict=True))
# Dimensions `add_tag` may write: values an operator (or a campaign) sets, not computed ones.
SETTABLE_KINDS = ("manual", "strategy")


@dataclass(frozen=True)
class AudienceInfo:
    dynamic: bool


@dataclass(frozen=True)
class DimensionInfo:
    # fact, rule, model, manual or strategy.
    kind: str
    active: bool
    # The values the dimension lists; empty when they come from the data (any value is fine).
    values: tuple[str, ...]


@dataclass(frozen=True)
class CouponTemplateInfo:
    retired: bool


@dataclass(frozen=True)
class SampleMember:
    fields: Mapping[str, str]
    # dimension -> values the member holds now.
    tags: Mapping[str, Sequence[str]] = field(default_factory=dict)


class Catalog(Protocol):
    """The other services as a journey's references see them (None: it does not exist)."""

    async def audience(self, tenant_id: str, audience_id: str) -> AudienceInfo | None: ...

    async def dimension(self, tenant_id: str, dimension: str) -> DimensionInfo | None: ...

    async def member(self, tenant_id: str, member_id: str) -> SampleMember | None: ...

    async def snapshot_exists(self, tenant_id: str, snapshot_id: str) -> bool: ...

    async def coupon_template(self, tenant_id: str, template_id: str) -> CouponTemplateInfo | None: ...


@dataclass(frozen=True)
class Rendered:
    template: str
    subject: str
    body: str


@dataclass(frozen=True)
class _Audience:
    path: str
    audience_id: str
    dynamic: bool


@dataclass(frozen=True)
class _Snapshot:
    path: str
    snapshot_id: str


@dataclass(frozen=True)
class _CouponTemplate:
    path: str
    template_id: str


@dataclass(frozen=True)
class _Tags:
    path: str
    dimension: str
    # (path, value) pairs that must be values of the dimension.
    values: tuple[tuple[str, str], ...] = ()
    settable: bool = False


def _event(match: EventMatch, path: str) -> Iterator[_Audience | _Tags]:
    if match.kind.startswith("tag_"):
        values = tuple((f"{path}.values[{i}]", value) for i, value in enumerate(match.values))
        yield _Tags(f"{path}.dimension", match.dimension, values)
    if match.kind.startswith("audience_"):
        yield _Audience(f"{path}.audience", match.audience, dynamic=True)


def _named(definition: JourneyDefinition) -> Iterator[_Audience | _Snapshot | _Tags | _CouponTemplate]:
    """Every reference of a (shape-valid) definition with its path in the definition."""
    entry = definition.entry
    if entry.event is not None:
        yield from _event(entry.event, "entry.event")
    if entry.audience is not None:
        yield _Audience("entry.audience.audience", entry.audience.audience, dynamic=True)
    if entry.broadcast is not None and entry.broadcast.audience:
        yield _Audience("entry.broadcast.audience", entry.broadcast.audience, dynamic=False)
    if entry.broadcast is not None and entry.broadcast.snapshot:
        yield _Snapshot("entry.broadcast.snapshot", entry.broadcast.snapshot.removeprefix("snapshots/"))
    for i, step in enumerate(definition.steps):
        yield from _step(step, f"steps[{i}]")
    for name, template in definition.templates.items():
        for j, tag_field in enumerate(template.tag_fields):
            tag_path = f"templates[{name!r}].tag_fields[{j}]"
            values = tuple((f"{tag_path}.texts[{value!r}]", value) for value in tag_field.texts)
            yield _Tags(f"{tag_path}.dimension", tag_field.dimension, values)
    if definition.goal is not None:
        yield from _event(definition.goal.event, "goal.event")
    for i, match in enumerate(definition.exit_on):
        yield from _event(match, f"exit_on[{i}]")


def _step(step: Step, path: str) -> Iterator[_Audience | _Tags | _CouponTemplate]:
    if step.wait_for_event is not None:
        yield from _event(step.wait_for_event.event, f"{path}.wait_for_event.event")
    if step.branch is not None:
        condition = step.branch.condition
        if condition.audience:
            yield _Audience(f"{path}.branch.condition.audience", condition.audience, dynamic=False)
        if condition.tag is not None:
            tag_path = f"{path}.branch.condition.tag"
            values = tuple((f"{tag_path}.values[{j}]", v) for j, v in enumerate(condition.tag.values))
            yield _Tags(f"{tag_path}.dimension", condition.tag.dimension, values)
    if step.add_tag is not None:
        add = step.add_tag
        value = ((f"{path}.add_tag.value", add.value),)
        yield _Tags(f"{path}.add_tag.dimension", add.dimension, value, settable=True)
    if step.issue_coupon is not None:
        yield _CouponTemplate(f"{path}.issue_coupon.template", step.issue_coupon.template)


async def check(
    catalog: Catalog, tenant_id: str, definition: JourneyDefinition, prefix: str
) -> list[FieldViolation]:
    """Every broken reference of a shape-valid definition, each named by `prefix.path`."""
    v: list[FieldViolation] = []
    audiences: dict[str, AudienceInfo | None] = {}
    dimensions: dict[str, DimensionInfo | None] = {}
    for ref in _named(definition):
        path = f"{prefix}.{ref.path}"
        if isinstance(ref, _Snapshot):
            if not await catalog.snapshot_exists(tenant_id, ref.snapshot_id):
                v.append(
                    FieldViolation(path, f"names no snapshot: snapshots/{ref.snapshot_id} does not exist")
                )
            continue
        if isinstance(ref, _CouponTemplate):
            v.extend(await _coupon_template(catalog, tenant_id, ref, path))
            continue
        if isinstance(ref, _Audience):
            if ref.audience_id not in audiences:
                audiences[ref.audience_id] = await catalog.audience(tenant_id, ref.audience_id)
            found_audience = audiences[ref.audience_id]
            if found_audience is None:
                v.append(
                    FieldViolation(path, f"names no audience: audiences/{ref.audience_id} does not exist")
                )
            elif ref.dynamic and not found_audience.dynamic:
                why = f"audiences/{ref.audience_id} is not dynamic: nothing follows its entries and exits"
                v.append(FieldViolation(path, why))
            continue
        if ref.dimension not in dimensions:
            dimensions[ref.dimension] = await catalog.dimension(tenant_id, ref.dimension)
        v.extend(_tags(ref, dimensions[ref.dimension], path, prefix))
    return v


async def _coupon_template(
    catalog: Catalog, tenant_id: str, ref: _CouponTemplate, path: str
) -> list[FieldViolation]:
    found = await catalog.coupon_template(tenant_id, ref.template_id)
    name = f"couponTemplates/{ref.template_id}"
    if found is None:
        return [FieldViolation(path, f"names no coupon template: {name} does not exist in the tasks service")]
    if found.retired:
        return [FieldViolation(path, f"{name} is retired: it issues no more coupons")]
    return []


def _tags(ref: _Tags, found: DimensionInfo | None, path: str, prefix: str) -> Iterator[FieldViolation]:
    if found is None:
        yield FieldViolation(path, f"names no tag dimension: {ref.dimension!r} is not in the catalog")
        return
    if not found.active:
        yield FieldViolation(path, f"tag dimension {ref.dimension!r} is retired")
        return
    if ref.settable and found.kind not in SETTABLE_KINDS:
        why = f"{ref.dimension!r} is a {found.kind} dimension: add_tag sets manual or strategy tags"
        yield FieldViolation(path, why)
    if found.values:
        for value_path, value in ref.values:
            if value not in found.values:
                yield FieldViolation(f"{prefix}.{value_path}", f"{value!r} is not a value of {ref.dimension}")


def render(
    definition: JourneyDefinition, sample: SampleMember, prefix: str
) -> tuple[list[Rendered], list[FieldViolation]]:
    """Each template as `sample` would receive it, and the templates that cannot be formatted."""
    rendered: list[Rendered] = []
    v: list[FieldViolation] = []
    fields = {name: sample.fields.get(name, "") for name in PROFILE_FIELDS} | SAMPLE_COUPON
    for name, template in definition.templates.items():
        values = fields | templates.tag_field_values(template, sample.tags)
        try:
            subject, body = templates.render(template, values)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
            why = f"does not render for the sample member: {error}"
            v.append(FieldViolation(f"{prefix}.templates[{name!r}]", why))
            continue
        rendered.append(Rendered(name, subject, body))
    return rendered, v
