"""An Anthropic-compatible ``/v1/messages`` view, answered by the demo's scripted model.

Streaming requests get an async ``StreamingHttpResponse`` of SSE events; others a
``JsonResponse``. Your own view would call your model backend here instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from advisor_middleware.demo import paced_events, scripted_reply
from advisor_middleware.sse import encode_event


def _error(status: int, kind: str, message: str) -> JsonResponse:
    return JsonResponse({"type": "error", "error": {"type": kind, "message": message}}, status=status)


async def _sse(message: dict[str, Any]) -> AsyncIterator[bytes]:
    async for event in paced_events(message, settings.DEMO_DELAY):
        yield encode_event(event)


async def _messages(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _error(405, "invalid_request_error", "use POST")
    try:
        body = json.loads(request.body)
    except ValueError:
        return _error(400, "invalid_request_error", "body is not valid JSON")
    if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list):
        return _error(400, "invalid_request_error", "model and messages are required")
    message = scripted_reply(body)
    # Models named "*-json" answer one JSON Message even when asked to stream, as some backends
    # do; AdvisorMiddleware reads either answer on its legs.
    if body.get("stream") and not str(body["model"]).endswith("-json"):
        # An async iterator: Django streams it (a sync one would be drained in a thread first).
        return StreamingHttpResponse(_sse(message), content_type="text/event-stream")
    return JsonResponse(message)


# An API for programs, not a form: exempt it from CSRF checks if the project turns them on.
messages = csrf_exempt(_messages)
