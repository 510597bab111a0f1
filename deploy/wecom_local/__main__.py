"""`python -m deploy.wecom_local --port N --callback-url URL --corp-id ... --secret ... --token ...
--aes-key ...`: the local WeCom server for `make up`, until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from deploy.wecom_local.server import LocalWeCom


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.wecom_local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--callback-url", default="", help="where staff tag edits are called back")
    parser.add_argument("--corp-id", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--token", required=True, help="the callback token")
    parser.add_argument("--aes-key", required=True, help="the callback EncodingAESKey (43 characters)")
    parser.add_argument("--agent-id", default="")
    parser.add_argument("--expires-in", type=int, default=7200, help="access_token lifetime, seconds")
    return parser.parse_args(argv)


async def _serve(arguments: argparse.Namespace) -> None:
    wecom = LocalWeCom(
        corp_id=arguments.corp_id,
        secret=arguments.secret,
        token=arguments.token,
        encoding_aes_key=arguments.aes_key,
        callback_url=arguments.callback_url,
        agent_id=arguments.agent_id,
        expires_in=arguments.expires_in,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await wecom.start(arguments.host, arguments.port)
    print(f"local WeCom serving at {wecom.url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await wecom.stop()


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
