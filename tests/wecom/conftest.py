"""The local WeCom server for the WeCom tests: one per test module (`local_wecom`), or a fresh one
where a test changes quotas or the clock (`running_local_wecom`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from deploy.wecom_local import LocalWeCom
from tests.conftest import unique
from tests.ports import free_port

# A valid EncodingAESKey (43 characters of base64).
AES_KEY = "kWxPEV2QE6N1q9oGNVb5XQCMO1XIQV0MPPkO5q5Fj5o"


@contextlib.asynccontextmanager
async def running_local_wecom(**options: Any) -> AsyncIterator[LocalWeCom]:
    """A local WeCom on a free port with a corp of its own (unique id, secret and callback token)."""
    settings: dict[str, Any] = {
        "corp_id": unique("ww"),
        "secret": unique("secret"),
        "token": unique("token"),
        "encoding_aes_key": AES_KEY,
        **options,
    }
    wecom = LocalWeCom(**settings)
    await wecom.start("127.0.0.1", free_port())
    try:
        yield wecom
    finally:
        await wecom.stop()


@pytest.fixture(scope="module")
async def local_wecom() -> AsyncIterator[LocalWeCom]:
    async with running_local_wecom() as wecom:
        yield wecom


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
