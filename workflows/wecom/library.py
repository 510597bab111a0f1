"""The WeCom corp tag library as the push needs it: a pushed dimension is a corp tag group named by
its display name, each of its values a tag named by the value's display name (WeCom: 客户标签管理,
`get_corp_tag_list`, `add_corp_tag`, `edit_corp_tag`). Groups and tags are made the first time a
member needs them and their ids stored (tag_map_store); a display name changed in MemberOps is
renamed in WeCom.

Creating is made safe to repeat by adopting before creating: a group of the wanted name already in
WeCom (made by an attempt that died before it stored the ids, or by staff) is taken with its tags of
the wanted names, and `add_corp_tag` is asked only for what is still missing. WeCom answers 40071
for a tag name already in the group; the library then reads the group again and adopts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.db import Database
from workflows.wecom import tag_map_store
from workflows.wecom.api import WeComApi, WeComError
from workflows.wecom.tag_map_store import GROUP, TagRow

# add_corp_tag: "标签组名称, 最长为30个字符" / "标签名称, 最长为30个字符" (longer answers 40072).
NAME_MAX = 30
TAG_NAME_EXISTS = 40071
INVALID_TAG_ID = 40068


@dataclass(frozen=True)
class Dimension:
    """A pushed dimension as tagging defines it now."""

    name: str
    display_name: str
    # value -> display name, for the values the definition lists (data-driven ones have none).
    values: Mapping[str, str] = field(default_factory=dict)

    def group_name(self) -> str:
        return wecom_name(self.display_name or self.name)

    def tag_name(self, value: str) -> str:
        return wecom_name(self.values.get(value) or value)


def wecom_name(name: str) -> str:
    return name.strip()[:NAME_MAX] or "-"


class TagLibrary:
    """The tenant's groups and tags of the pushed dimensions, loaded once per round."""

    def __init__(
        self,
        db: Database,
        tenant_id: str,
        api: WeComApi,
        dimensions: Sequence[Dimension],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._db = db
        self._tenant_id = tenant_id
        self._api = api
        self._dimensions = {d.name: d for d in dimensions}
        self._clock = clock
        self._rows: dict[tuple[str, str], TagRow] = {}
        self.created = 0
        self.renamed = 0

    @property
    def dimensions(self) -> list[str]:
        return list(self._dimensions)

    async def load(self) -> None:
        async with self._db.transaction(self._tenant_id, readonly=True) as conn:
            rows = await tag_map_store.rows(conn, self.dimensions)
        self._rows = {(row.dimension, row.value): row for row in rows}

    def tag_id(self, dimension: str, value: str) -> str | None:
        row = self._rows.get((dimension, value))
        return row.tag_id if row is not None and value != GROUP else None

    def tag_ids(self, dimensions: Collection[str] | None = None) -> set[str]:
        """Every known tag of the pushed dimensions (or of `dimensions`): what the push may add or
        remove."""
        return {
            row.tag_id
            for row in self._rows.values()
            if row.value != GROUP and (dimensions is None or row.dimension in dimensions)
        }

    async def ensure(self, held: Mapping[str, Iterable[str]]) -> None:
        """Makes the group and tags of every (dimension, value) in `held` exist in WeCom."""
        for dimension, values in held.items():
            missing = [v for v in dict.fromkeys(values) if (dimension, v) not in self._rows]
            if missing:
                await self._create(self._dimensions[dimension], missing)

    async def rename(self) -> None:
        """Renames in WeCom what MemberOps renamed (a dimension's or a value's display name)."""
        for row in list(self._rows.values()):
            dimension = self._dimensions[row.dimension]
            wanted = dimension.group_name() if row.value == GROUP else dimension.tag_name(row.value)
            if row.name == wanted:
                continue
            try:
                await self._api.edit_corp_tag(
                    id=row.group_id if row.value == GROUP else row.tag_id, name=wanted
                )
            except WeComError as error:
                if error.errcode == INVALID_TAG_ID:
                    await self._forget([row.tag_id or row.group_id])
                    continue
                if error.errcode == TAG_NAME_EXISTS:
                    # A sibling holds the name (staff renamed one): this one keeps its old name.
                    continue
                raise
            await self._save([TagRow(row.dimension, row.value, row.group_id, row.tag_id, wanted)])
            self.renamed += 1

    async def verify(self) -> None:
        """Forgets the groups and tags that are gone from WeCom (staff deleted them), after WeCom
        refused a tag id; the next `ensure` makes them again."""
        group_ids = sorted({row.group_id for row in self._rows.values()})
        if not group_ids:
            return
        listed = await self._api.get_corp_tag_list(group_ids=group_ids)
        present = {g["group_id"] for g in listed} | {t["id"] for g in listed for t in g.get("tag", [])}
        gone = [row for row in self._rows.values() if (row.tag_id or row.group_id) not in present]
        await self._forget([row.tag_id or row.group_id for row in gone])

    # --- making groups and tags ---------------------------------------------------------------

    async def _create(self, dimension: Dimension, values: Sequence[str]) -> None:
        group = self._rows.get((dimension.name, GROUP))
        if group is None:
            listed = await self._api.get_corp_tag_list()
            found = next((g for g in listed if g.get("group_name") == dimension.group_name()), None)
            if found is not None:
                self._adopt(dimension, found)
                group = self._rows.get((dimension.name, GROUP))
        missing = [v for v in values if (dimension.name, v) not in self._rows]
        names = list(dict.fromkeys(dimension.tag_name(v) for v in missing))
        if names:
            group_id = group.group_id if group is not None else ""
            try:
                answered = await self._api.add_corp_tag(
                    group_name=dimension.group_name(), tags=names, group_id=group_id
                )
            except WeComError as error:
                if error.errcode != TAG_NAME_EXISTS or not group_id:
                    raise
                listed = await self._api.get_corp_tag_list(group_ids=[group_id])
                answered = listed[0] if listed else {}
            self.created += len(answered.get("tag", []))
            self._adopt(dimension, answered, values)
        await self._save([row for (d, _), row in self._rows.items() if d == dimension.name])

    def _adopt(self, dimension: Dimension, group: Mapping[str, Any], values: Sequence[str] = ()) -> None:
        """Takes a group WeCom answered and its tags whose names are the wanted values' names."""
        group_id = str(group.get("group_id", ""))
        if not group_id:
            return
        self._rows[(dimension.name, GROUP)] = TagRow(
            dimension.name, GROUP, group_id, "", str(group.get("group_name", dimension.group_name()))
        )
        by_name = {str(t.get("name", "")): str(t.get("id", "")) for t in group.get("tag", [])}
        for value in (*dimension.values, *values):
            tag_id = by_name.get(dimension.tag_name(value))
            if tag_id and (dimension.name, value) not in self._rows:
                self._rows[(dimension.name, value)] = TagRow(
                    dimension.name, value, group_id, tag_id, dimension.tag_name(value)
                )

    async def _save(self, rows: Sequence[TagRow]) -> None:
        async with self._db.transaction(self._tenant_id) as conn:
            await tag_map_store.save(conn, self._tenant_id, rows, self._clock())
        for row in rows:
            self._rows[(row.dimension, row.value)] = row

    async def _forget(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self._db.transaction(self._tenant_id) as conn:
            await tag_map_store.forget(conn, ids)
        gone = set(ids)
        self._rows = {
            key: row for key, row in self._rows.items() if row.tag_id not in gone and row.group_id not in gone
        }
