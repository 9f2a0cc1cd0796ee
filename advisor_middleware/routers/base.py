"""The host's side: how the middleware runs one Messages request (a *leg*)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..sse import RawDelta, encode_json, raw_delta_event

T = TypeVar("T")

MAX_LEG_BYTES = 32 * 1024 * 1024
"""The default of :attr:`Leg.max_bytes` (and of ``AdvisorMiddleware``'s ``max_leg_bytes``)."""

LEG_HEADER = b"x-advisor-leg"
"""Marks requests the middleware makes itself; the middleware passes them through untouched,
so a router that loops back to the same gateway can never recurse."""

ADVISOR_BETA = "advisor-tool-2026-03-01"

Batch = list[dict[str, Any] | RawDelta]
"""Stream events of one leg that arrived together: dicts, and deltas as
:data:`~advisor_middleware.sse.RawDelta` when the leg asked for them (``Leg.raw_deltas``)."""

OnBatch = Callable[[Batch], Awaitable[None]]
"""An async function that takes a leg's events as they arrive (:meth:`BatchRouter.push`)."""


HOP_BY_HOP = frozenset(
    b"""connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer
    transfer-encoding upgrade""".split()
)
"""Headers that concern one connection, not the request (RFC 9110 §7.6.1): never forwarded, by
the proxy or on a leg, and neither are the headers a ``connection`` header names."""

# Headers that describe the caller's body, or ask how our answer should be encoded, and so are
# not copied onto a leg: the leg has its own body (new length, no encoding) and we must be able
# to parse its answer (no accept-encoding, docs/protocol.md §8).
_BODY = frozenset({b"content-length", b"content-encoding", b"accept-encoding", b"expect", LEG_HEADER})

FORWARDED_ANSWER_HEADERS = frozenset(
    b"request-id x-request-id anthropic-organization-id retry-after retry-after-ms x-should-retry".split()
)
FORWARDED_ANSWER_PREFIXES = (b"anthropic-ratelimit-",)
"""The headers of a leg's answer that reach the client (:func:`forwarded_headers`): names, and
name prefixes. They describe the request (its id, the caller's rate limits, retry advice), not
the body: framing, encoding, content type and cookies stay with the leg."""


@dataclass(frozen=True)
class Leg:
    """One Messages request the middleware needs answered.

    ``body`` is an Anthropic Messages request with ``stream: true``. ``headers`` are the caller's
    request headers (their credentials included), already cleaned for a new request: no length or
    encoding headers, the advisor beta removed, and the ``x-advisor-leg`` marker added. ``scope`` is
    the caller's ASGI scope, for routers that need to know who is calling; treat it as read-only.

    ``raw_deltas``: the consumer also takes ``content_block_delta`` events as
    :data:`~advisor_middleware.sse.RawDelta` (their bytes, parsed only if needed) in
    the groups of ``batches`` and ``push``. A router may ignore it; the shipped ones that read SSE
    honour it. ``stream`` always yields dicts.
    """

    role: Literal["executor", "advisor"]
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    scope: Mapping[str, Any] = field(default_factory=dict)
    raw_deltas: bool = False
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False, compare=False)
    """Where the router puts the headers of the leg's answer, if it has them, before it hands
    over the leg's first events (or raises its error). The middleware passes those of
    :data:`FORWARDED_ANSWER_HEADERS` on to the client from the request's first executor leg.
    A router that has no headers leaves it empty."""
    max_bytes: int = MAX_LEG_BYTES
    """The most bytes of the answer a router reads: past it, the leg fails with a 502
    :class:`~advisor_middleware.UpstreamError` (:func:`~advisor_middleware.routers.events.too_large`).
    The shipped routers count every byte they read, stream or not; a router of your own should
    do the same, or a host that streams without end fills memory."""

    def encode(self) -> bytes:
        """``body`` as JSON bytes, as the shipped routers send it."""
        return encode_json(self.body)


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
    """Base of the shipped routers. A subclass writes one of two ways to hand over a leg's
    events in the groups they arrived in, and gets the other and the protocol's ``stream``:
    ``batches(leg)``, an async iterator of groups (for a router handed an iterator, such as
    LiteLLM's stream), or ``push(leg, on_batch)``, which awaits ``on_batch(group)`` for each
    group in the caller's task (for a router that calls an ASGI app or reads a socket).

    The middleware drives every leg with ``push``, so the loop, the host and the client's writer
    share the request's task. Exceptions raised by ``on_batch`` come out of ``push`` unchanged.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.batches is BatchRouter.batches and cls.push is BatchRouter.push:
            raise TypeError(f"{cls.__name__} must implement batches() or push()")

    async def batches(self, leg: Leg) -> AsyncIterator[Batch]:
        """The leg's events in groups. Derived from ``push``: it runs in a task of its own,
        and the groups waiting when the consumer asks come out as one."""
        # The channel's buffer of 16 groups is the only read-ahead.
        to_reader, from_push = anyio.create_memory_object_stream[Batch](16)
        failure: list[Exception] = []

        async def put(batch: Batch) -> None:
            if not batch:
                return
            try:
                # No checkpoint when there is room (anyio's send() always yields to the loop): the
                # reader takes everything sent before the producer had to wait as one group.
                to_reader.send_nowait(batch)
            except anyio.WouldBlock:
                await to_reader.send(batch)

        async def produce() -> None:
            async with to_reader:
                try:
                    await self.push(leg, put)
                except Exception as exc:  # raised to the consumer below, not as an ExceptionGroup
                    failure.append(exc)

        async with anyio.create_task_group() as tg, from_push:
            tg.start_soon(produce)
            async for first in from_push:
                try:
                    yield [*first, *_waiting(from_push)]
                except GeneratorExit:
                    # Closed early by the consumer: stop the producer and leave the task group
                    # normally (a GeneratorExit crossing it would come out as an ExceptionGroup).
                    tg.cancel_scope.cancel()
                    return
        if failure:
            raise failure[0]

    async def push(self, leg: Leg, on_batch: OnBatch) -> None:
        """Await ``on_batch`` for each group of the leg's events. Derived from ``batches``."""
        async with closing(self.batches(leg)) as batches:
            async for batch in batches:
                await on_batch(batch)

    async def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]:
        """The leg's events one by one (the :class:`MessagesRouter` protocol)."""
        async with closing(self.batches(leg)) as batches:
            async for batch in batches:
                for event in batch:
                    yield raw_delta_event(event) if type(event) is RawDelta else event


async def run_leg(router: MessagesRouter, leg: Leg, on_batch: OnBatch) -> None:
    """Run one leg, handing its events to ``on_batch``: through the router's own ``push`` when
    it has one (any :class:`BatchRouter`), else one event at a time from its ``stream``."""
    push = getattr(router, "push", None)
    if push is not None:
        await push(leg, on_batch)
        return
    async with closing(router.stream(leg)) as events:
        async for event in events:
            await on_batch([event])


def _waiting(stream: MemoryObjectReceiveStream[Batch]) -> Batch:
    """The events of every group waiting in ``stream``, taken without waiting."""
    waiting: Batch = []
    with suppress(anyio.WouldBlock, anyio.EndOfStream):
        while True:
            waiting += stream.receive_nowait()
    return waiting


def leg_headers(headers: list[tuple[bytes, bytes]] | Any, role: str) -> list[tuple[bytes, bytes]]:
    """The caller's headers, cleaned for a leg request (see :class:`Leg`)."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in end_to_end(headers, _BODY):
        if key == b"anthropic-beta":
            kept = [v.strip() for v in value.decode("latin-1").split(",") if v.strip() and v.strip() != ADVISOR_BETA]
            if not kept:
                continue
            value = ",".join(kept).encode("latin-1")
        out.append((key, value))
    out.append((LEG_HEADER, role.encode()))
    return out


def end_to_end(
    headers: list[tuple[bytes, bytes]] | Any, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """``headers`` with lower-case names, without the hop-by-hop ones (:data:`HOP_BY_HOP` and
    those a ``connection`` header names) and without those in ``drop``. The one rule for what
    goes on: the proxy's forwarded requests and answers, and every leg's request."""
    pairs = [(bytes(name).lower(), bytes(value)) for name, value in headers]
    dropped = HOP_BY_HOP | drop
    for name, value in pairs:
        if name == b"connection":
            dropped |= {token.strip().lower() for token in value.split(b",")}
    return [(name, value) for name, value in pairs if name not in dropped]


def forwarded_headers(headers: list[tuple[bytes, bytes]] | Any) -> list[tuple[bytes, bytes]]:
    """Of a leg's answer's headers, those the client gets on the middleware's own response, an
    error included (:data:`FORWARDED_ANSWER_HEADERS`)."""
    pairs = [(bytes(name).lower(), bytes(value)) for name, value in headers]
    return [(k, v) for k, v in pairs if k in FORWARDED_ANSWER_HEADERS or k.startswith(FORWARDED_ANSWER_PREFIXES)]


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
