"""Audience definitions: validation against the whitelist and the tag catalog, and versions.

A definition is validated whole (every bad field named by its path), stored with a content hash,
and changed only by adding a version; an update whose content equals the current version changes
nothing. The audience id is the natural key. Writes of one tenant are serialised (see
`store.lock_writes`), so references between audiences never form a cycle and a delete never leaves
a reference dangling.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from memberops.audience.v1 import audience_pb2

from runtime import page_tokens
from runtime.db import Connection, Database
from runtime.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Violations,
)
from services.audience import store
from services.tagging import rules

AUDIENCE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
NAME_PREFIX = "audiences/"
DIMENSION = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_DISPLAY_NAME = 64
MAX_DESCRIPTION = 1024
MAX_REQUEST_ID = 128
MAX_DEPTH = 10
MAX_NODES = 200
# Nodes of a rule with every audience it references inlined, as it is compiled.
MAX_INLINED_NODES = 1000
MAX_TAG_VALUES = 100
MAX_TAG_VALUE = 64
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
ACTIVE = 1

Match = audience_pb2.TagMatch


@dataclass(frozen=True)
class AudienceInput:
    audience_id: str
    rule: audience_pb2.AudienceRule | None
    display_name: str = ""
    description: str = ""
    dynamic: bool = False


@dataclass(frozen=True)
class Audience:
    spec: AudienceInput
    version: int
    create_time: dt.datetime
    update_time: dt.datetime
    delete_time: dt.datetime | None = None


@dataclass
class RuleFacts:
    """What a rule mentions that only the database can check: tag conditions and references."""

    tags: list[tuple[str, audience_pb2.TagCondition]] = field(default_factory=list)
    references: list[tuple[str, str]] = field(default_factory=list)
    nodes: int = 0


def audience_id_from_name(name: str, path: str) -> str:
    audience_id = name.removeprefix(NAME_PREFIX)
    if not name.startswith(NAME_PREFIX) or not AUDIENCE_ID.match(audience_id):
        raise InvalidArgument.field(path, "must be a resource name of the form audiences/{audience_id}")
    return audience_id


# --- validation of the shape ---------------------------------------------------------------------


def validate(spec: AudienceInput, path: str = "audience") -> RuleFacts:
    """Raises InvalidArgument naming every field outside the language; returns what to check next."""
    v = Violations()
    if not AUDIENCE_ID.match(spec.audience_id):
        v.add(f"{path}.audience_id", "must be 1-63 characters: a lower-case letter, then a-z, 0-9, _ or -")
    if len(spec.display_name) > MAX_DISPLAY_NAME:
        v.add(f"{path}.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    if len(spec.description) > MAX_DESCRIPTION:
        v.add(f"{path}.description", f"must be at most {MAX_DESCRIPTION} characters")
    facts = RuleFacts()
    if spec.rule is None:
        v.add(f"{path}.rule", "is required")
    else:
        _validate_rule(spec.rule, v, f"{path}.rule", facts)
    v.raise_if_any()
    return facts


def _validate_rule(rule: audience_pb2.AudienceRule, v: Violations, path: str, facts: RuleFacts) -> None:
    facts.nodes = rules.validate_tree(
        rule,
        v,
        path,
        lambda rule, node, v, path: _validate_leaf(rule, node, v, path, facts),
        MAX_DEPTH,
        MAX_NODES,
    )


async def check_draft(conn: Connection, rule: audience_pb2.AudienceRule, path: str) -> None:
    """An unsaved rule (a draft being edited) checked as a saved one's would be: its shape, the
    catalog, its references (a draft has no id, so it cannot be part of a cycle) and its size."""
    v, facts = Violations(), RuleFacts()
    _validate_rule(rule, v, path, facts)
    v.raise_if_any()
    await check_catalog(conn, facts, v)
    inlined = await check_references(conn, "", facts, v)
    if not v and inlined > MAX_INLINED_NODES:
        v.add(path, f"has {inlined} nodes with its audiences inlined; at most {MAX_INLINED_NODES}")
    v.raise_if_any()


def _validate_leaf(
    rule: audience_pb2.AudienceRule, node: str | None, v: Violations, path: str, facts: RuleFacts
) -> None:
    """The nodes only audience rules have (the combinators are `rules.validate_tree`'s)."""
    if node is None:
        v.add(path, "is empty: set one of all, any, not, tag, condition, audience")
    elif node == "condition":
        rules.validate_condition(rule.condition, v, f"{path}.condition")
    elif node == "tag":
        _validate_tag(rule.tag, v, f"{path}.tag")
        facts.tags.append((f"{path}.tag", rule.tag))
    else:
        assert node == "audience"
        referenced = rule.audience.removeprefix(NAME_PREFIX)
        if not rule.audience.startswith(NAME_PREFIX) or not AUDIENCE_ID.match(referenced):
            v.add(f"{path}.audience", "must be a resource name of the form audiences/{audience_id}")
        else:
            facts.references.append((f"{path}.audience", referenced))


def _validate_tag(tag: audience_pb2.TagCondition, v: Violations, path: str) -> None:
    if not DIMENSION.match(tag.dimension):
        v.add(f"{path}.dimension", "is required: a dimension of the tag catalog")
    match, values = tag.match, tag.values
    if match == Match.TAG_MATCH_UNSPECIFIED or match not in Match.values():
        v.add(f"{path}.match", "is required: HAS_VALUE, ANY_OF, NONE_OF or HAS_ANY_VALUE")
        return
    expected = {
        Match.TAG_MATCH_HAS_VALUE: (1, 1),
        Match.TAG_MATCH_ANY_OF: (1, MAX_TAG_VALUES),
        Match.TAG_MATCH_NONE_OF: (1, MAX_TAG_VALUES),
        Match.TAG_MATCH_HAS_ANY_VALUE: (0, 0),
    }[match]
    if not expected[0] <= len(values) <= expected[1]:
        count = str(expected[0]) if expected[0] == expected[1] else f"{expected[0]}-{expected[1]}"
        v.add(f"{path}.values", f"{Match.Name(match)} takes {count} value(s), got {len(values)}")
        return
    for i, value in enumerate(values):
        if not 1 <= len(value) <= MAX_TAG_VALUE:
            v.add(f"{path}.values[{i}]", f"must be 1-{MAX_TAG_VALUE} characters")


# --- checks against the catalog and the other audiences -------------------------------------------


async def check_catalog(conn: Connection, facts: RuleFacts, v: Violations) -> None:
    """Every tag condition names an active dimension of tagging's catalog and values it has."""
    if not facts.tags:
        return
    known = await store.tag_dimensions(conn, sorted({tag.dimension for _, tag in facts.tags}))
    for path, tag in facts.tags:
        found = known.get(tag.dimension)
        if found is None:
            v.add(f"{path}.dimension", f"unknown tag dimension {tag.dimension!r}")
        elif found["state"] != ACTIVE:
            v.add(f"{path}.dimension", f"tag dimension {tag.dimension!r} is retired")
        elif found["tag_values"]:
            allowed = set(found["tag_values"])
            for i, value in enumerate(tag.values):
                if value not in allowed:
                    v.add(f"{path}.values[{i}]", f"{value!r} is not a value of {tag.dimension}")


async def check_references(conn: Connection, audience_id: str, facts: RuleFacts, v: Violations) -> int:
    """Every referenced audience exists and none leads back to `audience_id`. Returns the nodes of
    the rule with its references inlined (each reference counted at every place it is used)."""
    graph: dict[str, dict[str, Any]] = {}
    frontier = {ref for _, ref in facts.references if ref != audience_id}
    while frontier:
        found = await store.current_rules(conn, sorted(frontier))
        graph.update(found)
        for ref in frontier - found.keys():
            graph.setdefault(ref, {})
        frontier = {r for row in found.values() for r in row["referenced"]} - graph.keys() - {audience_id}

    def reaches_self(ref: str) -> bool:
        stack, seen = [ref], {ref}
        while stack:
            for following in (graph.get(stack.pop()) or {}).get("referenced", ()):
                if following == audience_id:
                    return True
                if following not in seen:
                    seen.add(following)
                    stack.append(following)
        return False

    sizes: dict[str, int] = {}
    total = facts.nodes
    for path, ref in facts.references:
        if ref == audience_id:
            v.add(path, "references the audience itself: a cycle")
        elif not graph.get(ref):
            v.add(path, f"unknown audience audiences/{ref}")
        elif reaches_self(ref):
            v.add(path, f"audiences/{ref} references this audience (directly or through others): a cycle")
        else:
            total += _inlined(ref, graph, sizes)
    return total


async def check_referencing(conn: Connection, audience_id: str, inlined: int, v: Violations) -> None:
    """Every audience that references `audience_id`, directly or through others, stays within
    `MAX_INLINED_NODES` with the new rule (of `inlined` nodes) in place. Each was checked when it
    was saved, but against the rule `audience_id` had then: a chain of audiences each referencing
    the previous one three times was accepted, and an update of its root to 151 nodes then made the
    last one 12,000 nodes (issue 17)."""
    graph: dict[str, dict[str, Any]] = {}
    frontier = {audience_id}
    while frontier:  # up: the audiences whose current version references the frontier
        found = await store.referencing_rules(conn, sorted(frontier))
        frontier = found.keys() - graph.keys() - {audience_id}
        graph.update(found)
    users = sorted(graph.keys() - {audience_id})
    graph.pop(audience_id, None)
    frontier = {r for row in graph.values() for r in row["referenced"]} - graph.keys() - {audience_id}
    while frontier:  # down: what else they reference, to size them
        found = await store.current_rules(conn, sorted(frontier))
        graph.update(found)
        for ref in frontier - found.keys():
            graph.setdefault(ref, {})
        frontier = {r for row in found.values() for r in row["referenced"]} - graph.keys() - {audience_id}
    sizes = {audience_id: inlined}
    for user in users:
        size = _inlined(user, graph, sizes)
        if size > MAX_INLINED_NODES:
            v.add(
                "audience.rule",
                f"would make audiences/{user}, which references this audience, {size} nodes with its "
                f"audiences inlined; at most {MAX_INLINED_NODES}",
            )
            return


def _inlined(root: str, graph: dict[str, dict[str, Any]], sizes: dict[str, int]) -> int:
    """Nodes of `root`'s stored rule with every audience it references inlined, each counted at
    every place it is used; `sizes` keeps what is known (and may hold the size of an audience being
    saved, in place of its stored rule). An audience missing from `graph` or met again on its own
    path counts one node. Iterative: a chain of audiences may be longer than Python recurses."""
    walked: dict[str, list[str]] = {}
    stack, on_path = [root], {root}
    while stack:
        ref = stack[-1]
        row = graph.get(ref)
        if ref in sizes or not row:
            sizes.setdefault(ref, 1)
            on_path.discard(stack.pop())
            continue
        if ref not in walked:
            walked[ref] = list(_walk(json_format.ParseDict(row["rule"], audience_pb2.AudienceRule())))
        pending = [r for r in walked[ref] if r and r not in sizes and r not in on_path]
        if pending:
            stack.append(pending[0])
            on_path.add(pending[0])
            continue
        sizes[ref] = sum(1 + (sizes.get(r, 1) if r else 0) for r in walked[ref])
        on_path.discard(stack.pop())
    return sizes[root]


def _walk(rule: audience_pb2.AudienceRule) -> Iterator[str]:
    """One item per node: the referenced audience id for references, "" for every other node."""
    node = rule.WhichOneof("node")
    yield rule.audience.removeprefix(NAME_PREFIX) if node == "audience" else ""
    if node in ("all", "any"):
        for child in getattr(rule, node).rules:
            yield from _walk(child)
    elif node == "not":
        yield from _walk(getattr(rule, "not"))


def referenced_ids(rule: audience_pb2.AudienceRule) -> list[str]:
    return sorted({ref for ref in _walk(rule) if ref})


# --- stored form ---------------------------------------------------------------------------------


def content_hash(spec: AudienceInput) -> str:
    """Equal for equal definitions: the rule is hashed by its deterministic wire form."""
    assert spec.rule is not None
    digest = hashlib.sha256()
    for part in (spec.display_name, spec.description):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(spec.rule.SerializeToString(deterministic=True))
    if spec.dynamic:  # only then, so hashes of versions stored before the flag existed still match
        digest.update(b"\0dynamic")
    return digest.hexdigest()


def _stored(spec: AudienceInput) -> store.StoredVersion:
    assert spec.rule is not None
    return store.StoredVersion(
        audience_id=spec.audience_id,
        display_name=spec.display_name,
        description=spec.description,
        rule=json_format.MessageToDict(spec.rule),
        content_hash=content_hash(spec),
        referenced=referenced_ids(spec.rule),
        dynamic=spec.dynamic,
    )


def rule_from_json(body: dict[str, Any]) -> audience_pb2.AudienceRule:
    return json_format.ParseDict(body, audience_pb2.AudienceRule())


def _audience(row: dict[str, Any]) -> Audience:
    spec = AudienceInput(
        audience_id=row["audience_id"],
        rule=rule_from_json(row["rule"]),
        display_name=row["display_name"],
        description=row["description"],
        dynamic=row["dynamic"],
    )
    return Audience(spec, row["version"], row["create_time"], row["update_time"], row["delete_time"])


# --- the service ---------------------------------------------------------------------------------


class Definitions:
    def __init__(self, db: Database, changed: Callable[[str, str], None] | None = None) -> None:
        self._db = db
        # Told (tenant, audience id) after an update or delete commits: what caches a definition.
        self._changed = changed or (lambda tenant_id, audience_id: None)

    async def _check(self, conn: Connection, spec: AudienceInput, facts: RuleFacts) -> None:
        v = Violations()
        await check_catalog(conn, facts, v)
        inlined = await check_references(conn, spec.audience_id, facts, v)
        if not v and inlined > MAX_INLINED_NODES:
            v.add(
                "audience.rule",
                f"has {inlined} nodes with its audiences inlined; at most {MAX_INLINED_NODES}",
            )
        if not v:
            await check_referencing(conn, spec.audience_id, inlined, v)
        v.raise_if_any()

    async def create(self, tenant_id: str, spec: AudienceInput, request_id: str) -> Audience:
        facts = validate(spec)
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")
        version = _stored(spec)
        async with self._db.transaction(tenant_id) as conn:
            await store.lock_writes(conn, tenant_id)
            await self._check(conn, spec, facts)
            if not await store.insert_audience(conn, tenant_id, version, request_id):
                first = await store.get_audience(conn, spec.audience_id, 1, include_deleted=True)
                assert first is not None
                if not (
                    request_id
                    and first["create_request_id"] == request_id
                    and first["content_hash"] == version.content_hash
                ):
                    state = " (deleted; ids are not reused)" if first["delete_time"] else ""
                    raise AlreadyExists(f"audiences/{spec.audience_id} exists{state}")
                return _audience(first)
            created = await store.get_audience(conn, spec.audience_id, None)
        assert created is not None
        return _audience(created)

    async def update(self, tenant_id: str, spec: AudienceInput, expected_version: int) -> Audience:
        facts = validate(spec)
        if expected_version < 0:
            raise InvalidArgument.field("expected_version", "must be 0 (any) or a version number")
        version = _stored(spec)
        async with self._db.transaction(tenant_id) as conn:
            await store.lock_writes(conn, tenant_id)
            current = await store.lock_audience(conn, spec.audience_id)
            if current is None or current["delete_time"] is not None:
                raise NotFound(f"audiences/{spec.audience_id} not found")
            # The current content again is a retry of the update that made it: nothing changes.
            if current["content_hash"] != version.content_hash:
                if expected_version and expected_version != current["version"]:
                    raise Aborted(
                        f"audiences/{spec.audience_id} is at version {current['version']}, "
                        f"not {expected_version}"
                    )
                await self._check(conn, spec, facts)
                await store.add_version(conn, tenant_id, current["version"] + 1, version)
            updated = await store.get_audience(conn, spec.audience_id, None)
        assert updated is not None
        self._changed(tenant_id, spec.audience_id)
        return _audience(updated)

    async def get(self, tenant_id: str, audience_id: str, version: int) -> Audience:
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (current) or a version number")
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            found = await store.get_audience(conn, audience_id, version or None)
        if found is None:
            raise NotFound(
                f"audiences/{audience_id}" + (f" version {version}" if version else "") + " not found"
            )
        return _audience(found)

    async def list_page(self, tenant_id: str, page_size: int, page_token: str) -> tuple[list[Audience], str]:
        size = page_tokens.page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = page_tokens.decode_matching(page_token, "audiences", AUDIENCE_ID)
        async with self._db.transaction(tenant_id, readonly=True) as conn:
            rows = await store.list_audiences(conn, after, size + 1)
        page = [_audience(row) for row in rows[:size]]
        return page, page_tokens.encode("audiences", page[-1].spec.audience_id) if len(rows) > size else ""

    async def delete(self, tenant_id: str, audience_id: str) -> Audience:
        async with self._db.transaction(tenant_id) as conn:
            await store.lock_writes(conn, tenant_id)
            current = await store.lock_audience(conn, audience_id)
            if current is None:
                raise NotFound(f"audiences/{audience_id} not found")
            if current["delete_time"] is None:
                users = await store.referencing(conn, audience_id)
                if users:
                    names = ", ".join(f"audiences/{u}" for u in users[:5])
                    raise FailedPrecondition(f"audiences/{audience_id} is referenced by {names}")
                await store.mark_deleted(conn, audience_id)
            deleted = await store.get_audience(conn, audience_id, None, include_deleted=True)
        assert deleted is not None
        self._changed(tenant_id, audience_id)
        return _audience(deleted)
