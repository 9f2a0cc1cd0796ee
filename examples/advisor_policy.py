"""An advisor policy for ``advisor.toml``: premium keys get the strong advisor, every other key a
cheaper one, and a per-key cap on consults per request.

Named in the config file as ``policy = "examples.advisor_policy:policy"`` (run from the
repository's root), or passed as ``AdvisorMiddleware(app, advisor_policy=policy)``.
"""

from __future__ import annotations

from advisor_middleware import ConsultContext, PolicyDecision

PREMIUM_KEYS = frozenset({"sk-premium"})
"""Callers whose consults go to the advisor they asked for (the profile of Claude Code's alias)."""
ECONOMY_ADVISOR = "advisor-economy"
"""What everyone else consults: a name the config file's profiles map to a cheaper model."""
CONSULTS_PER_REQUEST = {"sk-trial": 1}
"""Keys with fewer consults per request than ``max_consults``; further calls are refused."""


def caller_key(context: ConsultContext) -> str:
    """The caller's API key, from ``x-api-key`` or a bearer ``authorization`` header."""
    key = context.headers.get("x-api-key")
    if key is None:
        key = context.headers.get("authorization", "").removeprefix("Bearer ")
    return key


def policy(context: ConsultContext) -> PolicyDecision | None:
    """Allow (None), deny or redirect the consult about to run."""
    key = caller_key(context)
    cap = CONSULTS_PER_REQUEST.get(key)
    if cap is not None and context.consult > cap:
        return PolicyDecision.deny("max_uses_exceeded")
    if key in PREMIUM_KEYS:
        return None
    return PolicyDecision.override(model=ECONOMY_ADVISOR)
