from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx2
import pytest
from starlette.applications import Starlette

from advisor_middleware import AdvisorMiddleware

from .support.upstream import Script, scripted_host

# LiteLLM (tests/test_litellm*.py) fetches its model price map from the network at import unless
# told to use the copy it ships; the same variable reaches the proxies those tests start.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def make_app(script: Script) -> Callable[..., Starlette]:
    """The scripted Starlette host with ``AdvisorMiddleware`` added the usual way."""

    def build(**options: Any) -> Starlette:
        app = scripted_host(script)
        app.add_middleware(AdvisorMiddleware, **options)
        return app

    return build


@pytest.fixture
async def client(make_app: Callable[..., Starlette]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official SDK, in-process, as the oracle for the wire format (docs/protocol.md §3)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=make_app()))
    async with anthropic.AsyncAnthropic(api_key="sk-test", base_url="http://testserver", http_client=http) as sdk:
        yield sdk
