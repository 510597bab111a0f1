"""SQL of member search: exact matches by id, phone or WeCom external_userid, and nickname matches
in (length, id) order. Every function runs on a connection already inside a tenant transaction.

Conditions compare the stored columns of migration 0020 (`nickname_folded`, `nickname_length`) and
plain ones, so that under row-level security they can be index conditions (see there)."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.db import Connection


async def exact_matches(
    conn: Connection, member_id: str, phones: Sequence[str], wecom_external_userid: str = ""
) -> list[str]:
    """Ids of the members whose id is `member_id` ('' for none), whose phone is one of `phones` or
    whose WeCom external_userid is `wecom_external_userid` ('' for none), in id order."""
    rows = await conn.fetch(
        """SELECT member_id FROM tagging.members WHERE member_id = $1
           UNION
           SELECT member_id FROM tagging.members WHERE phone = ANY($2::text[]) AND phone <> ''
           UNION
           SELECT member_id FROM tagging.members
           WHERE wecom_external_userid = $3 AND wecom_external_userid <> ''
           ORDER BY member_id""",
        member_id,
        list(phones),
        wecom_external_userid,
    )
    return [row["member_id"] for row in rows]


async def nickname_matches(
    conn: Connection,
    pattern: str,
    min_length: int,
    after: tuple[int, str],
    excluded: Sequence[str],
    limit: int,
) -> list[tuple[int, str]]:
    """(nickname length, member id) of up to `limit` members whose folded nickname is LIKE
    `pattern` folded by PostgreSQL (Python folds a few letters otherwise), after `after` in
    (length, id) order, leaving out the `excluded` ids. Nicknames shorter than `min_length` are not
    read: they cannot contain the text."""
    rows = await conn.fetch(
        """SELECT nickname_length, member_id FROM tagging.members
           WHERE nickname_length >= $2 AND (nickname_length, member_id) > ($3, $4)
             AND member_id <> ALL($5::text[]) AND nickname_folded LIKE lower($1)
           ORDER BY nickname_length, member_id
           LIMIT $6""",
        pattern,
        min_length,
        after[0],
        after[1],
        list(excluded),
        limit,
    )
    return [(row["nickname_length"], row["member_id"]) for row in rows]
