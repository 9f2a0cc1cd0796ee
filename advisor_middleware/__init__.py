"""advisor-middleware: Anthropic's advisor tool for any model, as pure ASGI middleware."""

from typing import TYPE_CHECKING, Any

from .blocks import AdvisorTool
from .config import AdvisorConfig
from .errors import AdvisorRequestError, UpstreamError
from .middleware import AdvisorMiddleware
from .profiles import AdvisorProfile, ConsultContext, PolicyDecision
from .routers import AppRouter, Leg, LiteLLMRouter, MessagesRouter
from .settings_file import load_config

if TYPE_CHECKING:
    from .routers.http import HTTPRouter

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `import advisor_middleware` does not import httpx (see routers/__init__.py).
    if name == "HTTPRouter":
        from .routers.http import HTTPRouter

        return HTTPRouter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdvisorConfig",
    "AdvisorMiddleware",
    "AdvisorProfile",
    "AdvisorRequestError",
    "AdvisorTool",
    "AppRouter",
    "ConsultContext",
    "HTTPRouter",
    "Leg",
    "LiteLLMRouter",
    "MessagesRouter",
    "PolicyDecision",
    "UpstreamError",
    "__version__",
    "load_config",
]
