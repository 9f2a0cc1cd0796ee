"""The host ``tests/test_claude_code_turns.py`` serves: the demo gateway, logging what it receives.

Served as ``python -m advisor_middleware serve tests.support.cc_host:app``, which wraps ``app`` in
``AdvisorMiddleware``: every request logged here is one the host gets, each leg with its
``x-advisor-leg`` header. Each POST is appended to the file named by ``$CC_HOST_LOG`` as one
JSON line ``{"path": ..., "leg": "executor" | "advisor" | null, "body": <the body's text>}``.
"""

from __future__ import annotations

import json
import os

import anyio

from advisor_middleware._types import Receive, Scope, Send
from advisor_middleware.demo import DemoGateway

from .helpers import read_body, replaying

LOG_ENV = "CC_HOST_LOG"

gateway = DemoGateway(delay=0, advisor_delay=0)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http" or scope["method"] != "POST":
        await gateway(scope, receive, send)
        return
    body = await read_body(receive)
    headers = dict(scope["headers"])
    leg = headers.get(b"x-advisor-leg")
    record = {"path": scope["path"], "leg": leg.decode() if leg else None, "body": body.decode()}
    async with await anyio.open_file(os.environ[LOG_ENV], "a", encoding="utf-8") as log:
        await log.write(json.dumps(record) + "\n")
    await gateway(scope, replaying(body, receive), send)
