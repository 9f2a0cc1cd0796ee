"""Routers: how legs reach a model. ``AppRouter`` (the default) re-enters the wrapped app;
``HTTPRouter`` sends legs to a remote Anthropic-compatible gateway; ``LiteLLMRouter`` to a
``litellm.Router`` held in-process (without importing LiteLLM itself)."""

from .app import AppRouter
from .base import LEG_HEADER, Leg, MessagesRouter, leg_headers
from .http import HTTPRouter
from .litellm import LiteLLMRouter

__all__ = ["LEG_HEADER", "AppRouter", "HTTPRouter", "Leg", "LiteLLMRouter", "MessagesRouter", "leg_headers"]
