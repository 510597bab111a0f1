"""Rendering a template with the member's personal fields, read at send time."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from workflows.journeys.definition import Template, placeholders


def tag_field_values(template: Template, tags: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The template's tag fields for a member holding `tags` (dimension -> current values)."""
    values: dict[str, str] = {}
    for tag_field in template.tag_fields:
        held = [value for value in tags.get(tag_field.dimension, ()) if value in tag_field.texts]
        values[tag_field.name] = tag_field.texts[held[0]] if held else tag_field.default
    return values


def render(template: Template, fields: Mapping[str, str]) -> tuple[str, str]:
    """(subject, body). Validation guaranteed every placeholder is a known field; a field the member
    has no value for renders empty."""
    complete = {name: "" for name in _names(template)} | dict(fields)
    return template.subject.format_map(complete), template.body.format_map(complete)


def _names(template: Template) -> frozenset[str]:
    return _placeholders_of(template.subject, template.body)


@functools.lru_cache(maxsize=256)
def _placeholders_of(subject: str, body: str) -> frozenset[str]:
    """Parsed once per text: a broadcast renders the same template for every member."""
    return frozenset({*placeholders(subject), *placeholders(body)})
