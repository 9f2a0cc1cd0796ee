"""A FastAPI gateway with per-key model permissions and a spend log, given the advisor tool.

Run it (offline: the model is the demo's scripted one):

    uvicorn examples.fastapi_app:app --port 8080

    curl -sN http://127.0.0.1:8080/v1/messages -H 'x-api-key: sk-full' -H 'content-type: application/json' -d '{
      "model": "demo-executor", "max_tokens": 1024, "stream": true,
      "messages": [{"role": "user", "content": "Plan a birthday party"}],
      "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}]}'
    curl -s http://127.0.0.1:8080/v1/spend -H 'x-api-key: sk-full'

``AdvisorMiddleware`` sends every leg (executor and advisor) through this app's own route with the
caller's headers, so the ``authorize`` dependency checks each one: with ``sk-executor-only`` the
advisor leg is refused (403), the client sees an ``advisor_tool_result_error`` and the executor
carries on without advice. ``/v1/spend`` lists every request made under the caller's key.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.demo import paced_events, scripted_reply
from advisor_middleware.sse import encode_event

KEYS: dict[str, frozenset[str]] = {
    "sk-full": frozenset({"demo-executor", "demo-advisor"}),
    "sk-executor-only": frozenset({"demo-executor"}),
}
"""API key -> the models it may call."""


class GatewayError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status, self.kind, self.message = status, kind, message


def _key(request: Request) -> str:
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if key not in request.app.state.keys:
        raise GatewayError(401, "authentication_error", "invalid x-api-key")
    return key


async def authorize(request: Request) -> dict[str, Any]:
    """Authenticate the key, check it may call the requested model, and log the request."""
    key = _key(request)
    body = await request.json()  # Starlette caches the body: the route reads it again for free
    model = str(body.get("model"))
    allowed = model in request.app.state.keys[key]
    leg = request.headers.get("x-advisor-leg", "direct")
    request.state.spend[key].append({"model": model, "leg": leg, "allowed": allowed})
    if not allowed:
        raise GatewayError(403, "permission_error", f"this key may not call {model!r}")
    assert isinstance(body, dict)
    return body


def create_app(*, delay: float = 0.04, keys: Mapping[str, frozenset[str]] = KEYS) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"spend": defaultdict(list)}  # a real gateway opens its database here

    app = FastAPI(lifespan=lifespan)
    app.state.keys = dict(keys)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        error = {"type": "error", "error": {"type": exc.kind, "message": exc.message}}
        return JSONResponse(error, status_code=exc.status)

    @app.post("/v1/messages")
    async def messages(body: Annotated[dict[str, Any], Depends(authorize)]) -> Response:
        message = scripted_reply(body)
        if not body.get("stream"):
            return JSONResponse(message)
        events = (encode_event(event) async for event in paced_events(message, delay))
        return StreamingResponse(events, media_type="text/event-stream")

    @app.get("/v1/spend")
    async def spend(request: Request) -> dict[str, Any]:
        key = _key(request)
        return {"key": key, "requests": request.state.spend[key]}

    # Added last, so it is the outermost middleware: every leg re-enters the app inside it and
    # meets the route's dependencies, as a direct request does.
    app.add_middleware(AdvisorMiddleware, ping_interval=5.0)
    return app


app = create_app(delay=float(os.environ.get("DEMO_DELAY", "0.04")))
