"""advisor-middleware: Anthropic's advisor tool for any model, as pure ASGI middleware."""

from .blocks import AdvisorTool
from .config import AdvisorConfig
from .errors import AdvisorRequestError, UpstreamError
from .middleware import AdvisorMiddleware
from .routers import AppRouter, HTTPRouter, Leg, LiteLLMRouter, MessagesRouter

__version__ = "0.1.0"

__all__ = [
    "AdvisorConfig",
    "AdvisorMiddleware",
    "AdvisorRequestError",
    "AdvisorTool",
    "AppRouter",
    "HTTPRouter",
    "Leg",
    "LiteLLMRouter",
    "MessagesRouter",
    "UpstreamError",
    "__version__",
]
