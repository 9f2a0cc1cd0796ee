"""Routers: how legs reach a model. ``AppRouter`` (the default) re-enters the wrapped app."""

from .app import AppRouter
from .base import LEG_HEADER, Leg, MessagesRouter, leg_headers

__all__ = ["LEG_HEADER", "AppRouter", "Leg", "MessagesRouter", "leg_headers"]
