"""Operators in control of the advisor: profiles, a fallback chain and a policy hook.

A consult is planned before its advisor leg runs (:func:`plan_consult`): the policy hook, if any,
allows it, denies it or overrides the model and ``max_tokens``; the first profile whose ``match``
fits the requested advisor model says which models answer, in order, and how. The plan's models
are then tried in turn within one time budget (:func:`run_chain`). docs/operators.md describes
the model for operators.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .blocks import AdvisorErrorCode

if TYPE_CHECKING:
    from .blocks import AdvisorTool
    from .config import AdvisorConfig

__all__ = [
    "FALLBACK_CODES",
    "AdvisorPolicy",
    "AdvisorProfile",
    "ConsultContext",
    "ConsultPlan",
    "PolicyDecision",
    "plan_consult",
    "request_headers",
    "run_chain",
]

log = logging.getLogger("advisor_middleware")

FALLBACK_CODES: frozenset[AdvisorErrorCode] = frozenset(
    {"overloaded", "too_many_requests", "unavailable", "execution_time_exceeded"}
)
"""The failures after which a profile tries its next model, unless it says otherwise."""

OWNED_PARAMS = frozenset({"model", "messages", "system", "stream", "max_tokens", "tools"})
"""Fields of the advisor leg's request that the middleware sets; a profile's ``params`` may not."""

ModelName = Annotated[str, Field(min_length=1)]


class AdvisorProfile(BaseModel):
    """How consults of a requested advisor model run. The first profile of
    ``advisor_profiles`` whose ``match`` fits the requested model (after the policy's override)
    applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: ModelName
    """The requested advisor model: an exact name or a glob (``claude-opus-*``; ``fnmatch`` rules,
    case-sensitive)."""
    models: tuple[ModelName, ...] = Field(min_length=1)
    """The models called, in order: the first is the advisor, the rest its fallback chain."""
    instructions: str | None = None
    """Added to the advisor's system prompt, after ours (or ``advisor_system_prompt``)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """The advisor leg's ``max_tokens`` when the tool entry sets none."""
    params: dict[str, Any] = Field(default_factory=dict)
    """More fields of the advisor leg's request (``temperature``, ``thinking``, ``metadata``...);
    not those the middleware sets (``OWNED_PARAMS``)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds the whole consult may take, every attempt included (default ``advisor_timeout``)."""
    caching: Literal["5m", "1h", "off"] | None = None
    """Prompt caching of this profile's advisor legs; None follows ``advisor_caching`` and the
    tool's ``caching``."""
    fallback_on: frozenset[AdvisorErrorCode] = FALLBACK_CODES
    """Error codes after which the next model of ``models`` is tried; any other code ends the consult."""

    @field_validator("params")
    @classmethod
    def _not_owned(cls, params: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(OWNED_PARAMS & params.keys())
        if owned:
            raise ValueError(f"{', '.join(owned)}: set by the middleware, not a profile")
        return params

    def matches(self, model: str) -> bool:
        return fnmatchcase(model, self.match)


@dataclass(frozen=True, slots=True)
class ConsultContext:
    """What a policy hook is told about a consult about to run."""

    headers: Mapping[str, str]
    """The request's headers, names in lower case (``x-api-key``, ``authorization``...); a
    header sent more than once reads as its first value, as the host reads it (Starlette)."""
    executor_model: str
    advisor_model: str
    """The advisor model the client asked for."""
    consult: int
    """This consult's number in the request, from 1."""
    iterations: Sequence[Mapping[str, Any]]
    """``usage.iterations`` so far in this request (executor legs and advisor attempts)."""


class PolicyDecision(BaseModel):
    """A policy hook's answer: allow the consult (perhaps with another model or ``max_tokens``),
    or deny it with an ``error_code`` (the executor gets ``advisor_tool_result_error`` and goes on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: bool = True
    error_code: AdvisorErrorCode = "unavailable"
    """The code of a denied consult."""
    model: ModelName | None = None
    """Consult this model instead of the requested one; profiles apply to it."""
    max_tokens: int | None = Field(default=None, ge=1)
    """The advisor leg's ``max_tokens``, whatever the tool or the profile says."""

    @classmethod
    def deny(cls, error_code: AdvisorErrorCode = "unavailable") -> PolicyDecision:
        return cls(allow=False, error_code=error_code)

    @classmethod
    def override(cls, *, model: str | None = None, max_tokens: int | None = None) -> PolicyDecision:
        return cls(model=model, max_tokens=max_tokens)


_ALLOW = PolicyDecision()

AdvisorPolicy: TypeAlias = Callable[[ConsultContext], PolicyDecision | Awaitable[PolicyDecision | None] | None]
"""A policy hook: sync or async, given a :class:`ConsultContext`; None allows the consult."""


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``ConsultContext.headers`` from the ASGI scope's: the first value of a repeated header,
    so that a policy judges the key the host authenticates, not one appended after it."""
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


@dataclass(frozen=True, slots=True)
class ConsultPlan:
    """One consult as it will run."""

    models: tuple[str, ...]
    """The models to try, in order."""
    max_tokens: int
    instructions: str | None
    params: Mapping[str, Any]
    timeout: float
    """Seconds for the whole consult."""
    caching: Literal["5m", "1h", "off"] | None
    fallback_on: frozenset[str]
    logged: bool
    """Whether each attempt is logged at INFO: those of a profile's consults are."""


async def plan_consult(
    config: AdvisorConfig, tool: AdvisorTool, context: Callable[[], ConsultContext]
) -> ConsultPlan | AdvisorErrorCode:
    """The plan of a consult, or the error code that ends it before any advisor leg runs.
    ``context`` makes the policy's view of the request, only when there is a policy."""
    decision = await _decide(config.advisor_policy, context, config.advisor_timeout)
    if isinstance(decision, str):
        return decision
    model = decision.model or tool.model
    matched = next((p for p in config.advisor_profiles if p.matches(model)), None)
    if matched is None and config.unmatched_advisor == "refuse":
        log.info("advisor model %.100r matches no profile: refused", model)  # the client's name: cut, escaped
        return "model_not_found"
    # The requested model as its own one-model profile (its fields need no validating).
    profile = matched or AdvisorProfile.model_construct(match=model, models=(model,))
    return ConsultPlan(
        models=profile.models,
        max_tokens=decision.max_tokens or tool.max_tokens or profile.max_tokens or config.advisor_max_tokens,
        instructions=profile.instructions,
        params=profile.params,
        timeout=profile.timeout or config.advisor_timeout,
        caching=profile.caching,
        fallback_on=profile.fallback_on,
        logged=matched is not None,
    )


async def _decide(
    policy: AdvisorPolicy | None, context: Callable[[], ConsultContext], seconds: float
) -> PolicyDecision | AdvisorErrorCode:
    if policy is None:
        return _ALLOW
    seen = context()
    try:
        with anyio.move_on_after(seconds) as waiting:  # an async hook that hangs ends the consult
            answer = policy(seen)
            if inspect.isawaitable(answer):
                answer = await answer
        if waiting.cancelled_caught:
            log.warning("the advisor policy gave no answer in %s s: execution_time_exceeded", seconds)
            return "execution_time_exceeded"
        decision = _ALLOW if answer is None else PolicyDecision.model_validate(answer)
    except Exception:  # a ValidationError too: the hook returned something else
        log.exception("the advisor policy failed; the consult ends as unavailable")
        return "unavailable"
    if not decision.allow:
        log.info("advisor policy denied consult %d (%s)", seen.consult, decision.error_code)
        return decision.error_code
    return decision


Attempt = Callable[[str, float], Awaitable[dict[str, Any]]]
"""Runs one advisor leg on a model, by a deadline (``anyio.current_time()`` clock); returns the
fields of its ``advisor_tool_result`` content (``text`` or ``error_code``)."""


async def run_chain(
    plan: ConsultPlan, attempt: Attempt, on_fallback: Callable[[str, str, str], None] | None = None
) -> dict[str, Any]:
    """Try the plan's models in order until one answers, fails with a code not in
    ``fallback_on``, or the consult's time runs out; the last attempt's fields are the result.
    ``on_fallback(failed_model, next_model, error_code)`` is told of each step down the chain."""
    deadline = anyio.current_time() + plan.timeout
    fields: dict[str, Any] = {"error_code": "execution_time_exceeded"}
    for number, model in enumerate(plan.models, 1):
        started = anyio.current_time()
        fields = await attempt(model, deadline)
        code = fields.get("error_code")
        ended = anyio.current_time()
        if plan.logged:
            log.info(
                "advisor attempt %d/%d: model %s, %s, %.3f s",
                number,
                len(plan.models),
                model,
                code or "answered",
                ended - started,
            )
        if code is None or code not in plan.fallback_on or ended >= deadline:
            break
        if on_fallback is not None and number < len(plan.models):
            on_fallback(model, plan.models[number], code)
    return fields
