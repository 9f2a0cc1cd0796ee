"""Routers: how legs reach a model. ``AppRouter`` (the default) re-enters the wrapped app;
``HTTPRouter`` sends legs to a remote Anthropic-compatible gateway; ``LiteLLMRouter`` to a
``litellm.Router`` held in-process (without importing LiteLLM itself)."""

from typing import TYPE_CHECKING, Any

from .app import AppRouter
from .base import LEG_HEADER, Leg, MessagesRouter, leg_headers
from .litellm import LiteLLMRouter

if TYPE_CHECKING:
    from .http import HTTPRouter


def __getattr__(name: str) -> Any:
    # HTTPRouter imports httpx, which takes a noticeable time and memory to import; apps that
    # only use the in-process default should not pay for it.
    if name == "HTTPRouter":
        from .http import HTTPRouter

        return HTTPRouter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LEG_HEADER", "AppRouter", "HTTPRouter", "Leg", "LiteLLMRouter", "MessagesRouter", "leg_headers"]
