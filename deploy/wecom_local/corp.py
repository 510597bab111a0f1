"""The in-memory corp of the local WeCom server and WeCom's rules for it, without HTTP.

Each method is one of WeCom's APIs (or a staff action of the `/_local` controls) and either answers
the JSON WeCom documents or raises `Refusal` with the errcode WeCom documents for the case (global
errcodes page, 全局错误码, and each API's page under 客户联系 > 客户标签管理 / 消息推送). Where WeCom's
documentation is silent, the choice is noted where it is made.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Errcodes of WeCom's global table (全局错误码) the local server answers.
BUSY = -1  # 系统繁忙
INVALID_SECRET = 40001  # 不合法的secret参数
INVALID_USERID = 40003  # 无效的UserID
INVALID_CORPID = 40013  # 不合法的CorpID
INVALID_TOKEN = 40014  # 不合法的access_token
INVALID_PARAMETER = 40058  # 不合法的参数
INVALID_TAG_ID = 40068  # 不合法的标签ID
TAG_NAME_EXISTS = 40071  # 不合法的标签名字: 标签名字已经存在
TAG_NAME_LENGTH = 40072  # 不合法的标签名字长度
INVALID_EXTERNAL_USERID = 40096  # 不合法的外部联系人userid
TOKEN_MISSING = 41001  # 缺少access_token参数
INVALID_MSGID = 41047  # 无效的企业群发消息id
NO_CUSTOMER = 41048  # 无可发送的客户
TOKEN_EXPIRED = 42001  # access_token已过期
FREQUENCY_LIMIT = 45009  # 接口调用超过限制
CONCURRENCY_LIMIT = 45033  # 接口并发调用超过限制
NOT_EXTERNAL_CONTACT = 84061  # 不存在外部联系人的关系
BAD_JSON = 47001  # 解析JSON/XML内容错误

_MESSAGES = {
    BUSY: "system busy",
    INVALID_SECRET: "invalid credential",
    INVALID_USERID: "invalid userid",
    INVALID_CORPID: "invalid corpid",
    INVALID_TOKEN: "invalid access_token",
    INVALID_PARAMETER: "invalid Request Parameter",
    INVALID_TAG_ID: "invalid tagid",
    TAG_NAME_EXISTS: "tag name already exists",
    TAG_NAME_LENGTH: "invalid tag name length",
    INVALID_EXTERNAL_USERID: "invalid external userid",
    TOKEN_MISSING: "access_token missing",
    INVALID_MSGID: "invalid msgid",
    NO_CUSTOMER: "no customer to send to",
    TOKEN_EXPIRED: "access_token expired",
    FREQUENCY_LIMIT: "api freq out of limit",
    CONCURRENCY_LIMIT: "api concurrent out of limit",
    NOT_EXTERNAL_CONTACT: "not external contact",
    BAD_JSON: "data format error",
}

# add_corp_tag: "标签组名称, 最长为30个字符" / "标签名称, 最长为30个字符".
NAME_MAX = 30
# WeCom's per-corp limit for one API: 1万次/分 (the hourly 15万 is not modelled).
DEFAULT_PER_MINUTE = 10_000
# get_groupmsg_send_result: limit "最大值1000, 默认值500".
SEND_RESULT_LIMIT = 1000


class Refusal(Exception):
    """An errcode answer."""

    def __init__(self, errcode: int, detail: str = "") -> None:
        self.errcode = errcode
        self.errmsg = _MESSAGES.get(errcode, "error") + (f", {detail}" if detail else "")
        super().__init__(f"{errcode} {self.errmsg}")

    def answer(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "errmsg": self.errmsg}


def ok(**fields: Any) -> dict[str, Any]:
    return {"errcode": 0, "errmsg": "ok", **fields}


@dataclass
class Tag:
    id: str
    name: str
    create_time: int
    order: int = 0


@dataclass
class Group:
    group_id: str
    group_name: str
    create_time: int
    order: int = 0
    tags: dict[str, Tag] = field(default_factory=dict)


@dataclass
class Follow:
    """One staff member's relationship with a customer (follow_user), which holds its tags."""

    userid: str
    createtime: int
    tag_ids: list[str] = field(default_factory=list)


@dataclass
class Customer:
    external_userid: str
    name: str
    follows: dict[str, Follow] = field(default_factory=dict)


@dataclass
class Message:
    msgid: str
    sender: str
    content: str
    create_time: int
    # external_userid -> (status, send_time): 1 sent, 2 not sent because not a friend.
    results: dict[str, tuple[int, int]] = field(default_factory=dict)
    fail_list: list[str] = field(default_factory=list)


def _strings(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refusal(INVALID_PARAMETER, f"{key} must be a list of strings")
    return value


def _string(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise Refusal(INVALID_PARAMETER, f"{key} must be a string")
    return value


def _name(name: str) -> str:
    if not name or len(name) > NAME_MAX:
        raise Refusal(TAG_NAME_LENGTH)
    return name


class Corp:
    """One corp: its credentials, staff, customers, tag library, tokens, quotas and messages."""

    def __init__(
        self, *, corp_id: str, secret: str, clock: Callable[[], float], expires_in: int = 7200
    ) -> None:
        self.corp_id = corp_id
        self.secret = secret
        self.expires_in = expires_in
        self._clock = clock
        self.staff: set[str] = set()
        self.customers: dict[str, Customer] = {}
        self.groups: dict[str, Group] = {}
        self.messages: dict[str, Message] = {}
        self.tokens: dict[str, float] = {}  # access_token -> expiry (clock seconds)
        self.quotas: dict[str, int] = {}  # api -> calls per minute
        self._used: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)

    def now(self) -> int:
        return int(self._clock())

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):010d}"

    # --- access_token (获取access_token) ---------------------------------------------------------

    def gettoken(self, corpid: str, corpsecret: str) -> dict[str, Any]:
        """ "有效期内重复获取返回相同结果, 过期后获取会返回新的access_token"."""
        if corpid != self.corp_id:
            raise Refusal(INVALID_CORPID)
        if not secrets.compare_digest(corpsecret.encode(), self.secret.encode()):
            raise Refusal(INVALID_SECRET)
        now = self._clock()
        for token, expiry in self.tokens.items():
            if expiry > now:
                return ok(access_token=token, expires_in=int(expiry - now))
        token = secrets.token_urlsafe(48)
        self.tokens[token] = now + self.expires_in
        return ok(access_token=token, expires_in=self.expires_in)

    def check_token(self, token: str | None) -> None:
        if not token:
            raise Refusal(TOKEN_MISSING)
        expiry = self.tokens.get(token)
        if expiry is None:
            raise Refusal(INVALID_TOKEN)
        if expiry <= self._clock():
            raise Refusal(TOKEN_EXPIRED)

    def expire_tokens(self) -> None:
        """Every token issued so far answers 42001 from now on (WeCom may end a token early)."""
        now = self._clock()
        self.tokens = {token: min(expiry, now) for token, expiry in self.tokens.items()}

    def revoke_tokens(self) -> None:
        """Every token issued so far becomes unknown: 40014."""
        self.tokens.clear()

    # --- quotas ------------------------------------------------------------------------------------

    def count_call(self, api: str) -> None:
        """45009 once an API's calls this minute pass its quota, for the rest of that minute ("1分钟后
        自动解除"). Calls refused count too, as hammering a blocked API does not lift the block."""
        minute = int(self._clock() // 60)
        used = self._used.get((api, minute), 0) + 1
        self._used = {key: value for key, value in self._used.items() if key[1] == minute}
        self._used[(api, minute)] = used
        if used > self.quotas.get(api, DEFAULT_PER_MINUTE):
            raise Refusal(FREQUENCY_LIMIT)

    # --- staff and customers (what the admin console and staff's phones would do) ---------------

    def add_staff(self, userid: str) -> None:
        self.staff.add(userid)

    def add_customer(self, external_userid: str, *, name: str, follow_users: Sequence[str]) -> None:
        for userid in follow_users:
            self.add_staff(userid)
        customer = self.customers.setdefault(external_userid, Customer(external_userid, name))
        customer.name = name or customer.name
        for userid in follow_users:
            customer.follows.setdefault(userid, Follow(userid, self.now()))

    def _follow(self, userid: str, external_userid: str) -> Follow:
        if userid not in self.staff:
            raise Refusal(INVALID_USERID)
        customer = self.customers.get(external_userid)
        if customer is None:
            raise Refusal(INVALID_EXTERNAL_USERID)
        follow = customer.follows.get(userid)
        if follow is None:
            raise Refusal(NOT_EXTERNAL_CONTACT)
        return follow

    def tag(self, tag_id: str) -> tuple[Group, Tag] | None:
        for group in self.groups.values():
            if tag_id in group.tags:
                return group, group.tags[tag_id]
        return None

    def customer_tags(self, external_userid: str, userid: str) -> list[str]:
        """The tag ids staff `userid` holds on the customer, in the order they were added."""
        return list(self._follow(userid, external_userid).tag_ids)

    # --- 客户标签管理 -------------------------------------------------------------------------------

    @staticmethod
    def _group_json(group: Group, tags: Sequence[Tag]) -> dict[str, Any]:
        return {
            "group_id": group.group_id,
            "group_name": group.group_name,
            "create_time": group.create_time,
            "order": group.order,
            "deleted": False,
            "tag": [
                {"id": t.id, "name": t.name, "create_time": t.create_time, "order": t.order, "deleted": False}
                for t in tags
            ],
        }

    def get_corp_tag_list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """ "若tag_id和group_id均为空, 则返回所有标签。同时传递tag_id和group_id时, 忽略tag_id"."""
        tag_ids, group_ids = _strings(body, "tag_id"), _strings(body, "group_id")
        listed = []
        for group in self.groups.values():
            if group_ids:
                if group.group_id in group_ids:
                    listed.append(self._group_json(group, list(group.tags.values())))
            elif tag_ids:
                chosen = [tag for tag in group.tags.values() if tag.id in tag_ids]
                if chosen:
                    listed.append(self._group_json(group, chosen))
            else:
                listed.append(self._group_json(group, list(group.tags.values())))
        return ok(tag_group=listed)

    def add_corp_tag(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """With group_id, tags join that group (group_name ignored); else a group named group_name
        is created, or joined when that name exists ("如果填写的groupname已经存在, 则会在此标签组下新建
        标签"). A tag name already in the group answers 40071."""
        raw_tags = body.get("tag")
        if not isinstance(raw_tags, list) or not raw_tags:
            raise Refusal(INVALID_PARAMETER, "tag is required")
        names: list[tuple[str, int]] = []
        for item in raw_tags:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise Refusal(INVALID_PARAMETER, "tag.name is required")
            order = item.get("order", 0)
            names.append((_name(item["name"]), order if isinstance(order, int) else 0))
        if len({name for name, _ in names}) != len(names):
            raise Refusal(TAG_NAME_EXISTS)
        group_id = _string(body, "group_id")
        if group_id:
            group = self.groups.get(group_id)
            if group is None:
                raise Refusal(INVALID_TAG_ID, "group_id")
        else:
            group_name = _name(_string(body, "group_name"))
            group = next((g for g in self.groups.values() if g.group_name == group_name), None)
            if group is None:
                order = body.get("order", 0)
                group = Group(
                    self._new_id("etG"), group_name, self.now(), order if isinstance(order, int) else 0
                )
        existing = {tag.name for tag in group.tags.values()}
        if any(name in existing for name, _ in names):
            raise Refusal(TAG_NAME_EXISTS)
        self.groups[group.group_id] = group
        created = []
        for name, order in names:
            tag = Tag(self._new_id("etT"), name, self.now(), order)
            group.tags[tag.id] = tag
            created.append(tag)
        return ok(tag_group=self._group_json(group, created))

    def edit_corp_tag(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`id` is a tag's or a group's; a name taken by a sibling answers 40071."""
        target = _string(body, "id")
        name = body.get("name")
        order = body.get("order")
        if name is not None:
            name = _name(_string(body, "name"))
        item: Group | Tag
        group = self.groups.get(target)
        if group is not None:
            taken = {g.group_name for g in self.groups.values() if g is not group}
            item = group
        else:
            found = self.tag(target)
            if found is None:
                raise Refusal(INVALID_TAG_ID)
            owner, item = found
            taken = {t.name for t in owner.tags.values() if t is not item}
        if name is not None:
            if name in taken:
                raise Refusal(TAG_NAME_EXISTS)
            if isinstance(item, Group):
                item.group_name = name
            else:
                item.name = name
        if isinstance(order, int):
            item.order = order
        return ok()

    def del_corp_tag(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Deleting a group deletes its tags; deleting a group's last tag deletes the group
        ("如果一个标签组下所有的标签被删除, 则该标签组会被自动删除"). Deleted tags leave every customer."""
        tag_ids, group_ids = _strings(body, "tag_id"), _strings(body, "group_id")
        if not tag_ids and not group_ids:
            raise Refusal(INVALID_PARAMETER, "tag_id or group_id is required")
        if any(group_id not in self.groups for group_id in group_ids) or any(
            self.tag(tag_id) is None for tag_id in tag_ids
        ):
            raise Refusal(INVALID_TAG_ID)
        gone: set[str] = set(tag_ids)
        for group_id in group_ids:
            gone |= set(self.groups.pop(group_id).tags)
        for group in list(self.groups.values()):
            for tag_id in tag_ids:
                group.tags.pop(tag_id, None)
            if not group.tags:
                del self.groups[group.group_id]
        for customer in self.customers.values():
            for follow in customer.follows.values():
                follow.tag_ids = [tag_id for tag_id in follow.tag_ids if tag_id not in gone]
        return ok()

    def mark_tag(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """编辑客户企业标签: add_tag and remove_tag on the follow_user entry of `userid`; "add_tag和
        remove_tag不可同时为空". An unknown tag id refuses the whole call (40068)."""
        follow = self._follow(_string(body, "userid"), _string(body, "external_userid"))
        add, remove = _strings(body, "add_tag"), _strings(body, "remove_tag")
        if not add and not remove:
            raise Refusal(INVALID_PARAMETER, "add_tag and remove_tag are both empty")
        if any(self.tag(tag_id) is None for tag_id in (*add, *remove)):
            raise Refusal(INVALID_TAG_ID)
        self.edit_tags(follow, add=add, remove=remove)
        return ok()

    @staticmethod
    def edit_tags(follow: Follow, *, add: Sequence[str], remove: Sequence[str]) -> None:
        # Removed first, then added: a tag named in both ends held (WeCom does not document it).
        kept = [tag_id for tag_id in follow.tag_ids if tag_id not in remove]
        follow.tag_ids = kept + [tag_id for tag_id in dict.fromkeys(add) if tag_id not in kept]

    def staff_edit_tags(
        self, userid: str, external_userid: str, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        """What a staff member does on their phone: the same rules as mark_tag."""
        self.mark_tag(
            {
                "userid": userid,
                "external_userid": external_userid,
                "add_tag": list(add),
                "remove_tag": list(remove),
            }
        )

    # --- 客户管理: 获取客户详情 ---------------------------------------------------------------------

    def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        """externalcontact/get: the customer and every staff member's follow_user entry with tags."""
        if not external_userid:
            raise Refusal(INVALID_EXTERNAL_USERID)
        customer = self.customers.get(external_userid)
        if customer is None:
            raise Refusal(INVALID_EXTERNAL_USERID)
        follow_user = []
        for follow in customer.follows.values():
            tags = []
            for tag_id in follow.tag_ids:
                found = self.tag(tag_id)
                if found is not None:
                    group, tag = found
                    tags.append(
                        {"group_name": group.group_name, "tag_name": tag.name, "tag_id": tag.id, "type": 1}
                    )
            follow_user.append(
                {
                    "userid": follow.userid,
                    "remark": "",
                    "description": "",
                    "createtime": follow.createtime,
                    "tags": tags,
                    "remark_mobiles": [],
                    "add_way": 1,
                    "oper_userid": follow.userid,
                }
            )
        contact = {
            "external_userid": external_userid,
            "name": customer.name,
            "type": 1,
            "avatar": "",
            "gender": 0,
        }
        return ok(external_contact=contact, follow_user=follow_user, next_cursor="")

    # --- 消息推送: 创建企业群发 / 获取企业群发成员执行结果 --------------------------------------------

    def add_msg_template(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """chat_type single to `external_userid` from `sender`. Unknown customers come back in
        fail_list ("无效或无法发送的external_userid列表"); none given answers 41048. The local server
        acts as if the sender confirmed the task at once (on a real phone staff tap send): each
        customer's status is 1 (sent) when the sender is their staff, 2 (not a friend) when not."""
        chat_type = body.get("chat_type", "single")
        if chat_type != "single":
            raise Refusal(INVALID_PARAMETER, "the local server supports chat_type single")
        sender = _string(body, "sender")
        if not sender or sender not in self.staff:
            raise Refusal(INVALID_USERID)
        text = body.get("text")
        content = text.get("content", "") if isinstance(text, dict) else ""
        if not isinstance(content, str) or not content:
            raise Refusal(INVALID_PARAMETER, "text.content is required")
        external_userids = _strings(body, "external_userid")
        if not external_userids:
            raise Refusal(NO_CUSTOMER)
        message = Message(self._new_id("msg"), sender, content, self.now())
        for external_userid in dict.fromkeys(external_userids):
            customer = self.customers.get(external_userid)
            if customer is None:
                message.fail_list.append(external_userid)
            elif sender in customer.follows:
                message.results[external_userid] = (1, self.now())
            else:
                message.results[external_userid] = (2, 0)
        self.messages[message.msgid] = message
        return ok(fail_list=message.fail_list, msgid=message.msgid)

    def get_groupmsg_send_result(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """send_list of one sender's part of a message, paged by `limit` and `cursor`."""
        message = self.messages.get(_string(body, "msgid"))
        if message is None:
            raise Refusal(INVALID_MSGID)
        userid = _string(body, "userid")
        limit = body.get("limit", 500)
        if not isinstance(limit, int) or not 0 < limit <= SEND_RESULT_LIMIT:
            raise Refusal(INVALID_PARAMETER, "limit")
        cursor = _string(body, "cursor")
        start = int(cursor) if cursor.isdigit() else 0
        entries = [
            {
                "external_userid": external_userid,
                "chat_id": "",
                "userid": message.sender,
                "status": status,
                "send_time": send_time,
            }
            for external_userid, (status, send_time) in message.results.items()
            if userid == message.sender
        ]
        page = entries[start : start + limit]
        more = start + limit < len(entries)
        return ok(next_cursor=str(start + limit) if more else "", send_list=page)
