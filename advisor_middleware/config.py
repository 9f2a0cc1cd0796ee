"""Operator options, validated once at start-up (typos in option names are errors)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from fnmatch import fnmatchcase
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .profiles import AdvisorPolicy, AdvisorProfile

__all__ = ["AdvisorConfig", "AdvisorOptions"]


class AdvisorConfig(BaseModel):
    """``AdvisorMiddleware``'s options: the one place that declares their defaults and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    paths: frozenset[str] = Field(default=frozenset({"/v1/messages"}))
    """Route paths (after ``root_path``) the middleware handles; a trailing slash also matches."""
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Request bodies above this get 413 ``request_too_large`` (Anthropic's own limit is 32 MB)."""
    ping_interval: float = Field(default=10.0, gt=0)
    """Seconds of silence after which a ``ping`` event is sent on a streaming response."""
    advisor_timeout: float = Field(default=300.0, gt=0)
    """Seconds one consult may take before it ends as ``execution_time_exceeded`` (a profile's
    ``timeout`` replaces it)."""
    advisor_max_tokens: int = Field(default=8192, ge=1)
    """``max_tokens`` of an advisor leg when the tool entry sets none."""
    max_consults: int | None = Field(default=10, ge=0)
    """Most consults one request may run, on top of the tool's ``max_uses`` (the lower wins);
    further calls get ``max_uses_exceeded``. ``None``: no operator cap."""
    max_leg_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Most bytes of one leg's answer the middleware reads (stream or JSON); past it the leg fails."""
    max_executor_legs: int = Field(default=25, ge=1)
    """Hard stop for an executor that keeps calling the advisor."""
    max_transcript_block_chars: int = Field(default=50_000, ge=100)
    """Longer blocks are truncated, with a marker, in the advisor's transcript."""
    max_transcript_chars: int = Field(default=400_000, ge=1000)
    """Budget for the advisor's whole transcript (about 100k tokens); see ``render_transcript``."""
    advisor_system_prompt: str | None = None
    """Replaces the built-in advisor system prompt."""
    advisor_caching: Literal["5m", "1h"] | None = None
    """Cache breakpoints on every advisor leg at this TTL, whatever the client sent (Claude Code
    never sends the tool's ``caching``). ``None``: follow the tool's ``caching`` field."""
    native_executor: Callable[[str], bool] | tuple[str, ...] | None = None
    """Executor models the host serves the advisor tool for itself (their requests pass through):
    ``native_executor(model)`` true, or ``model`` matches one of these glob patterns."""
    advisor_profiles: tuple[AdvisorProfile, ...] = ()
    """How consults run per requested advisor model (the first profile that matches applies):
    the models to call in order, instructions, parameters, a time budget (docs/operators.md)."""
    unmatched_advisor: Literal["as_requested", "refuse"] = "as_requested"
    """A requested advisor model that no profile matches: consulted as requested, or refused
    (``advisor_tool_result_error`` with ``model_not_found``; the executor goes on)."""
    report_advisor_model: Literal["answered", "requested"] = "answered"
    """The ``model`` of each ``advisor_message`` iteration: the model that answered that
    attempt, or the one the client asked for (for clients that price by it)."""
    advisor_policy: AdvisorPolicy | None = None
    """Called before each consult with a :class:`~advisor_middleware.profiles.ConsultContext`;
    allows, denies or overrides it (docs/operators.md)."""

    opentelemetry: bool = False
    """Emit OpenTelemetry GenAI spans and metrics for each orchestrated request, and carry the
    trace context on every leg (needs the ``[otel]`` extra; docs/observability.md)."""
    capture_content: bool = False
    """With ``opentelemetry``: also put the legs' messages, system prompts and answers on their
    spans (``gen_ai.input.messages`` and the like). Off by default: they hold what users said."""

    @field_validator("native_executor", mode="plain")
    @classmethod
    def _native_patterns(cls, value: Any) -> Callable[[str], bool] | tuple[str, ...] | None:
        if value is None or callable(value):
            return value  # type: ignore[no-any-return]
        if isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(p, str) for p in value):
            return tuple(value)
        raise ValueError("a callable or a list of model patterns (strings)")

    def runs_natively(self, model: str) -> bool:
        """Whether requests for executor ``model`` pass through (``native_executor``)."""
        native = self.native_executor
        if native is None or callable(native):
            return native is not None and native(model)
        return any(fnmatchcase(model, pattern) for pattern in native)


class AdvisorOptions(TypedDict, total=False):
    """``AdvisorMiddleware``'s keyword options for type checkers (a test keeps them in step)."""

    paths: Collection[str]
    max_body_bytes: int
    ping_interval: float
    advisor_timeout: float
    advisor_max_tokens: int
    max_consults: int | None
    max_leg_bytes: int
    max_executor_legs: int
    max_transcript_block_chars: int
    max_transcript_chars: int
    advisor_system_prompt: str | None
    advisor_caching: Literal["5m", "1h"] | None
    native_executor: Callable[[str], bool] | Sequence[str] | None
    advisor_profiles: Sequence[AdvisorProfile]
    unmatched_advisor: Literal["as_requested", "refuse"]
    report_advisor_model: Literal["answered", "requested"]
    advisor_policy: AdvisorPolicy | None
    opentelemetry: bool
    capture_content: bool
