"""Helpers shared by routers."""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamError

# Anthropic error types -> the HTTP status they come with (https://docs.anthropic.com/en/api/errors).
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def event_error(event: dict[str, Any]) -> UpstreamError:
    """An ``error`` stream event as an :class:`UpstreamError` with the status its type implies."""
    inner = event.get("error")
    if not isinstance(inner, dict):
        inner = {"type": "api_error", "message": str(inner)}
    status = _TYPE_STATUS.get(str(inner.get("type")), 500)
    return UpstreamError(status, {"type": "error", "error": inner})
