"""Rendering a template with the member's personal fields, read at send time."""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping, Sequence

from workflows.journeys.definition import MAX_RENDERED, Template


def tag_field_values(template: Template, tags: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The template's tag fields for a member holding `tags` (dimension -> current values)."""
    values: dict[str, str] = {}
    for tag_field in template.tag_fields:
        held = [value for value in tags.get(tag_field.dimension, ()) if value in tag_field.texts]
        values[tag_field.name] = tag_field.texts[held[0]] if held else tag_field.default
    return values


def render(template: Template, fields: Mapping[str, str]) -> tuple[str, str]:
    """(subject, body). Validation guaranteed every placeholder is a plain known field; a field the
    member has no value for renders empty."""
    return _fill(template.subject, fields), _fill(template.body, fields)


def _fill(text: str, fields: Mapping[str, str]) -> str:
    """Each `{name}` replaced by its value, cut at MAX_RENDERED characters. A format spec or
    conversion is ignored, not applied: validation refuses them now, and a version stored before
    (`{nickname:>100000000}`) must not build a string of that width for every member."""
    pieces: list[str] = []
    size = 0
    for literal, name in _parsed(text):
        for piece in (literal, "" if name is None else fields.get(name, "")):
            pieces.append(piece[: MAX_RENDERED - size])
            size += len(pieces[-1])
        if size >= MAX_RENDERED:
            break
    return "".join(pieces)


@functools.lru_cache(maxsize=512)
def _parsed(text: str) -> tuple[tuple[str, str | None], ...]:
    """Parsed once per text: a broadcast renders the same template for every member."""
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(text))
