"""Operator options, validated once at start-up (typos in option names are errors)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypedDict

from pydantic import BaseModel, ConfigDict, Field

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
    """Seconds one advisor leg may take before it ends as ``execution_time_exceeded``."""
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
    native_executor: Callable[[str], bool] | None = None
    """``native_executor(model)`` true: the host serves the advisor tool itself; pass through."""
    opentelemetry: bool = False
    """Emit OpenTelemetry GenAI spans and metrics for each orchestrated request, and carry the
    trace context on every leg (needs the ``[otel]`` extra; docs/observability.md)."""
    capture_content: bool = False
    """With ``opentelemetry``: also put the legs' messages, system prompts and answers on their
    spans (``gen_ai.input.messages`` and the like). Off by default: they hold what users said."""


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
    native_executor: Callable[[str], bool] | None
    opentelemetry: bool
    capture_content: bool
