"""Errors in Anthropic's shape (``{"type":"error","error":{"type":..., "message":...}}``)."""

from __future__ import annotations

import re
from typing import Any

import pydantic_core

from ._types import Send

_ERROR_STATUSES: dict[str, tuple[int, ...]] = {
    "invalid_request_error": (400, 415),
    "authentication_error": (401,),
    "billing_error": (402,),
    "permission_error": (403,),
    "not_found_error": (404,),
    "request_too_large": (413,),
    "rate_limit_error": (429,),
    "api_error": (500, 502, 503),
    "timeout_error": (504, 408),
    "overloaded_error": (529,),
}
"""Anthropic's error types and the HTTP statuses each comes with (docs/protocol.md §5). The
first status of a type is the one an ``error`` stream event of that type implies."""

_STATUS_TYPES = {status: kind for kind, statuses in _ERROR_STATUSES.items() for status in statuses}

ERROR_TYPES = frozenset(_ERROR_STATUSES)
"""Every ``error.type`` Anthropic's API answers with."""


def error_type_for_status(status: int) -> str:
    """The error type an answer with ``status`` carries."""
    return _STATUS_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


def status_for_error_type(error_type: str) -> int:
    """The status an error of ``error_type`` comes with (500 for a type Anthropic does not use)."""
    return _ERROR_STATUSES.get(error_type, (500,))[0]


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with ``status``, the JSON ``body`` and ``headers``: the middleware's and the proxy's
    own answers (errors in Anthropic's shape, :func:`error_body`; a Message)."""
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_body(error_type: str, message: str) -> bytes:
    return pydantic_core.to_json({"type": "error", "error": {"type": error_type, "message": message}})


# An error object as Anthropic writes it, type first: {"error": {"type": "overloaded_error", ...
_QUOTED_TYPE = re.compile(r'"error"\s*:\s*\{\s*"type"\s*:\s*"(\w+)"')


def quoted_error_type(message: str) -> str | None:
    """The Anthropic error type quoted in an error message, if any: gateways re-wrap provider
    errors (LiteLLM makes an Anthropic 529 a 500 ``api_error`` whose message quotes the
    ``overloaded_error``), and the quoted type says what happened."""
    match = _QUOTED_TYPE.search(message)
    return match[1] if match and match[1] in ERROR_TYPES else None


class ClientGone(OSError):
    """The client left while a leg was in flight. An ``OSError``, as a server's ``send`` raises
    once its client is gone (ASGI 2.4): the request ends quietly."""


class AdvisorRequestError(Exception):
    """The caller's request is invalid: answered with ``status`` and an Anthropic error body."""

    def __init__(self, message: str, status: int = 400, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for_status(status)

    @property
    def body(self) -> bytes:
        return error_body(self.error_type, self.message)


class UpstreamError(Exception):
    """A leg failed: a non-200 answer, an ``error`` event, or a broken stream.

    ``body`` is what the caller sees if this error ends the request, in Anthropic's error shape.
    A status that is not an error (``204``, a redirect) is a misbehaving upstream: ``502``.
    """

    def __init__(
        self,
        status: int,
        body: bytes | dict[str, Any] | str,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        detail: str | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            status, body = 502, f"upstream answered HTTP {status}, not a Messages answer"
        self.status = status
        self.headers = headers or []
        self.body = _normalise_body(status, body)
        info = self.error
        if detail is None:
            # A str body is our own words; any other is the upstream's, which may quote the
            # request or the model's output: only its size goes into the text that is logged.
            size = len(str(info.get("message") or ""))
            detail = body if isinstance(body, str) else f"the upstream's message ({size} characters)"
        self.detail = detail  # fit for logs at any level: sizes, positions and types, never a body
        super().__init__(f"{status} {info.get('type')}: {detail}")

    @property
    def error(self) -> dict[str, Any]:
        """The inner ``error`` object (``type``, ``message``)."""
        try:
            parsed = pydantic_core.from_json(self.body)
        except ValueError:
            return {}
        inner = parsed.get("error") if isinstance(parsed, dict) else None
        return inner if isinstance(inner, dict) else {}

    @property
    def kind(self) -> str:
        """The error's type, or the more precise one a generic ``api_error``'s message quotes."""
        info = self.error
        kind = str(info.get("type") or "")
        if kind in ("", "api_error"):
            kind = quoted_error_type(str(info.get("message") or "")) or kind
        return kind


def _is_error_shape(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "error" and isinstance(value.get("error"), dict)


def _normalise_body(status: int, body: bytes | dict[str, Any] | str) -> bytes:
    if isinstance(body, dict):
        return pydantic_core.to_json(body if _is_error_shape(body) else {"type": "error", "error": body})
    raw = body.encode() if isinstance(body, str) else body
    try:
        parsed = pydantic_core.from_json(raw)
    except ValueError:
        parsed = None
    if _is_error_shape(parsed):
        return raw
    inner = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(inner, dict):
        # OpenAI-style {"error": {...}} from a gateway: keep its message, give it Anthropic's shape.
        message = str(inner.get("message") or inner)
        return error_body(str(inner.get("type") or error_type_for_status(status)), message)
    text = raw.decode("utf-8", "replace").strip()[:2000] or f"upstream answered HTTP {status}"
    return error_body(error_type_for_status(status), text)
