"""Loose ASGI aliases, as Starlette declares its own.

asgiref's TypedDicts make ``AdvisorMiddleware(FastAPI())`` fail under ``mypy --strict``; these
aliases accept every real ASGI app while still typing our own code.
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
