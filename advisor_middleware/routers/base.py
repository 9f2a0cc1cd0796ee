"""The host's side: how the middleware runs one Messages request (a *leg*)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

__all__ = ["LEG_HEADER", "BatchRouter", "Leg", "MessagesRouter", "closing", "leg_batches", "leg_headers"]

LEG_HEADER = b"x-advisor-leg"
"""Marks requests the middleware makes itself; the middleware passes them through untouched,
so a router that loops back to the same gateway can never recurse."""

ADVISOR_BETA = "advisor-tool-2026-03-01"

# Hop-by-hop or body-describing headers that must not be copied onto a leg: the leg has its own
# body (new length, no encoding) and we must be able to parse its answer (no accept-encoding,
# asgi-ecosystem §2.7).
_DROP = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"content-encoding",
        b"accept-encoding",
        b"connection",
        b"keep-alive",
        b"expect",
        b"upgrade",
        b"te",
        b"trailer",
        LEG_HEADER,
    }
)


@dataclass(frozen=True)
class Leg:
    """One Messages request the middleware needs answered.

    ``body`` is an Anthropic Messages request with ``stream: true``. ``headers`` are the caller's
    request headers (their credentials included), already cleaned for a new request: no length or
    encoding headers, the advisor beta removed, and the ``x-advisor-leg`` marker added. ``scope`` is
    the caller's ASGI scope, for routers that need to know who is calling; treat it as read-only.
    """

    role: Literal["executor", "advisor"]
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    scope: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class MessagesRouter(Protocol):
    """Runs legs through the host's own routing.

    ``stream`` yields the Anthropic stream events of one Messages request as plain dicts, in
    order, ending with ``message_stop``. It raises :class:`~advisor_middleware.UpstreamError` for a
    non-200 answer or an ``error`` event. The middleware consumes the iterator to the end or closes
    it (``aclose``); cancelling it must cancel the request upstream.
    """

    def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]: ...


class BatchRouter:
    """Base of the shipped routers: they produce a leg's events in groups that arrived together
    (``batches``), and ``stream``, the protocol's method, hands them out one by one. The
    middleware prefers ``batches`` and relays each group in one ``send`` (docs/performance.md,
    step 7)."""

    def batches(self, leg: Leg) -> AsyncIterator[list[dict[str, Any]]]:
        raise NotImplementedError

    async def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]:
        """The leg's events one by one (the :class:`MessagesRouter` protocol)."""
        async with closing(self.batches(leg)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event


def leg_batches(router: MessagesRouter, leg: Leg) -> AsyncIterator[list[dict[str, Any]]]:
    """The leg's events in groups: a router's own ``batches(leg)`` when it has one (any
    :class:`BatchRouter`), else one group per event of its ``stream``."""
    batches = getattr(router, "batches", None)
    if batches is not None:
        return batches(leg)  # type: ignore[no-any-return]
    return _singletons(router.stream(leg))


async def _singletons(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    async with closing(events) as items:
        async for event in items:
            yield [event]


def leg_headers(headers: list[tuple[bytes, bytes]] | Any, role: str) -> list[tuple[bytes, bytes]]:
    """The caller's headers, cleaned for a leg request (see :class:`Leg`)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        key = name.lower()
        if key in _DROP:
            continue
        if key == b"anthropic-beta":
            kept = [v.strip() for v in value.decode("latin-1").split(",") if v.strip() and v.strip() != ADVISOR_BETA]
            if not kept:
                continue
            value = ",".join(kept).encode("latin-1")
        out.append((key, value))
    out.append((LEG_HEADER, role.encode()))
    return out


@asynccontextmanager
async def closing(events: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Like ``contextlib.aclosing``, for any async iterator: a router may return a plain async
    iterator, and one that has ``aclose`` gets it called even when the consumer stops early."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
