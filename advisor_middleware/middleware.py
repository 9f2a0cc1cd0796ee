"""``AdvisorMiddleware``: the ASGI side (match, read, classify, respond)."""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pydantic_core
from anyio.abc import TaskGroup

from ._types import ASGIApp, Message, Receive, Scope, Send
from .accumulate import MessageAccumulator
from .classify import classify
from .config import AdvisorConfig
from .errors import AdvisorRequestError, ClientGone, UpstreamError, error_body
from .orchestrator import Orchestration
from .routers.app import CLIENT, WIND_DOWN, AppRouter, Departure
from .routers.base import LEG_HEADER, NOTHING, MessagesRouter, forwarded_headers
from .sse import RawDelta, encode_event, encode_json

__all__ = ["AdvisorMiddleware"]

log = logging.getLogger("advisor_middleware")

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_LINGER = 0.1
"""Seconds the watcher may wait, once the response is out, for the server's ``http.disconnect``
before it is cancelled. Only the cost depends on it: either way the request ends."""


class AdvisorMiddleware:
    """Gives the wrapped app's ``/v1/messages`` route Anthropic's ``advisor_20260301`` tool.

    Requests that carry the advisor tool are answered by running the executor and advisor legs
    through ``router`` (default: :class:`AppRouter` around the wrapped app, so the host's own auth,
    budgets and logging apply to every leg) and merging them into the native blocks, stream events
    and ``usage.iterations`` that Anthropic's clients understand. Every other request reaches the
    app untouched (byte for byte when nothing advisor-related is in it).

    Usage::

        app.add_middleware(AdvisorMiddleware)                     # Starlette / FastAPI
        application = AdvisorMiddleware(get_asgi_application())  # Django

    Options (all keyword-only) are those of :class:`AdvisorConfig`, plus ``router``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: MessagesRouter | None = None,
        paths: set[str] | frozenset[str] | list[str] | tuple[str, ...] = ("/v1/messages",),
        max_body_bytes: int = 32 * 1024 * 1024,
        ping_interval: float = 10.0,
        advisor_timeout: float = 300.0,
        advisor_max_tokens: int = 8192,
        max_consults: int | None = 10,
        max_leg_bytes: int = 32 * 1024 * 1024,
        max_executor_legs: int = 25,
        max_transcript_block_chars: int = 50_000,
        max_transcript_chars: int = 400_000,
        advisor_system_prompt: str | None = None,
        native_executor: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.config = AdvisorConfig(
            paths=frozenset(p.rstrip("/") or "/" for p in paths),
            max_body_bytes=max_body_bytes,
            ping_interval=ping_interval,
            advisor_timeout=advisor_timeout,
            advisor_max_tokens=advisor_max_tokens,
            max_consults=max_consults,
            max_leg_bytes=max_leg_bytes,
            max_executor_legs=max_executor_legs,
            max_transcript_block_chars=max_transcript_block_chars,
            max_transcript_chars=max_transcript_chars,
            advisor_system_prompt=advisor_system_prompt,
            native_executor=native_executor,
        )
        self.router: MessagesRouter = router if router is not None else AppRouter(app)
        # Each matched spelling -> the path as configured: legs go there, not to the caller's
        # spelling of it (a trailing slash the host would redirect or refuse).
        self._routes = {p.rstrip("/") or "/": p for p in paths}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        encoding = b""
        for name, value in headers:
            if name == LEG_HEADER:
                # A leg we (or another instance) made: never handle it twice.
                await self.app(scope, receive, send)
                return
            if name == b"content-encoding":
                encoding = value.strip().lower()
        try:
            chunks = await self._read_body(headers, receive)
        except AdvisorRequestError as exc:
            await _send_error(send, exc.status, exc.body)
            return
        if chunks is None:
            return  # the client left while sending its body
        # Cheap byte scan first: with no string starting "advisor" there is nothing to do, and the
        # original chunks go to the app as they came, without a parse or even a join (issue 3;
        # design §2.3; issue 7: one scan of the bytes is the whole cost). A compressed body is
        # scanned once decoded.
        identity = encoding in (b"", b"identity")
        if identity and not _mentions_advisor(chunks):
            await self.app(scope, _replay(chunks, receive), send)
            return
        raw = body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not identity:
            try:
                body = _decode(raw, encoding, self.config.max_body_bytes)
            except AdvisorRequestError as exc:
                await _send_error(send, exc.status, exc.body)
                return
            if not _has_needle(body):
                await self.app(scope, _replay([raw], receive), send)
                return
        try:
            data = pydantic_core.from_json(body)
        except ValueError as exc:
            # Bytes that mention the advisor and that we cannot read (a lone surrogate escape,
            # nesting past the parser's limit): replayed, a laxer parser could read them and
            # see the advisor tool or blocks raw. The parser's message gives a position only.
            message = f"request body is not JSON the advisor middleware can read: {exc}"
            await _send_error(send, 400, error_body("invalid_request_error", message))
            return
        if not isinstance(data, dict):
            await self.app(scope, _replay([raw], receive), send)  # the host answers bad JSON its way
            return
        try:
            plan = classify(data)
        except AdvisorRequestError as exc:
            await _send_error(send, exc.status, exc.body)
            return
        native = self.config.native_executor
        if plan.action == "pass" or (
            plan.action == "orchestrate" and native is not None and native(str(data.get("model")))
        ):
            await self.app(scope, _replay([raw], receive), send)
            return
        if plan.action == "rewrite":
            new_body = encode_json(plan.body)
            new_scope = dict(scope)
            new_scope["headers"] = _with_length(headers, len(new_body))
            await self.app(new_scope, _replay([new_body], receive), send)
            return
        assert plan.tool is not None
        orchestration = Orchestration(
            router=self.router,
            config=self.config,
            body=plan.body,
            tool_index=plan.tool_index,
            tool=plan.tool,
            headers=list(headers),
            scope=scope if scope.get("path") == route else {**scope, "path": route, "raw_path": route.encode()},
            streaming=bool(plan.body.get("stream")),
            history=plan.history,
        )
        await self._respond(orchestration, receive, send)

    def _route(self, scope: Scope) -> str | None:
        """The path an ``AppRouter``'s legs take if the request's path is one of ``paths``: the
        configured path, under the request's ``root_path`` if its path starts with it."""
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        prefix = ""
        # Starlette's get_route_path: strip root_path only at a "/" boundary (asgi-ecosystem §2.6).
        if root_path and path.startswith(root_path) and (len(path) == len(root_path) or path[len(root_path)] == "/"):
            path = path[len(root_path) :]
            prefix = root_path
        configured = self._routes.get(path.rstrip("/") or "/")
        return None if configured is None else prefix + configured

    async def _read_body(self, headers: Any, receive: Receive) -> list[bytes] | None:
        """The body's chunks as they came (never empty: an empty body is ``[b""]``), or None
        if the client left first."""
        cap = self.config.max_body_bytes
        for name, value in headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise AdvisorRequestError("invalid content-length header") from None
                if declared > cap:
                    raise _too_large(cap)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > cap:
                    raise _too_large(cap)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks or [b""]

    async def _respond(self, orchestration: Orchestration, receive: Receive, send: Send) -> None:
        departure = Departure()
        token = CLIENT.set(departure)
        async with anyio.create_task_group() as tg:
            writer = (
                _StreamWriter(send, self.config.ping_interval, tg, orchestration.first_leg_headers)
                if orchestration.streaming
                else None
            )
            watcher = _Watcher(receive, tg, writer, departure)
            tg.start_soon(watcher.run)
            answered = False
            try:
                if writer is not None:
                    await self._write_stream(orchestration, writer)
                else:
                    await self._write_json(orchestration, send)
                answered = True
            except OSError:
                pass  # ASGI 2.4 servers raise from send once the client is gone
            finally:
                if answered:
                    # The response is out. Servers answer the watcher's pending receive with
                    # http.disconnect once it is (the ASGI HTTP spec's "sent if receive is
                    # called after a response has been sent"; uvicorn, hypercorn, granian and
                    # httpx's ASGITransport wake a receive already waiting), and the watcher
                    # ends on its own: half the cost of cancelling it (docs/performance.md,
                    # step 14).
                    # A server that stays silent gets _LINGER seconds, then the cancel.
                    watcher.answered = True
                    tg.cancel_scope.deadline = anyio.current_time() + _LINGER
                else:
                    tg.cancel_scope.cancel()
                CLIENT.reset(token)

    async def _write_json(self, orchestration: Orchestration, send: Send) -> None:
        acc = MessageAccumulator()

        def feed(group: Sequence[dict[str, Any] | RawDelta]) -> Awaitable[None]:
            acc.feed_all(group)  # RawDelta deltas are parsed at complete()
            return NOTHING  # a plain function, not a coroutine (routers/base.py)

        try:
            await orchestration.run(feed)
            message = acc.complete()  # parses the deltas kept as bytes
        except OSError:
            raise  # the client is gone (ClientGone): nobody to answer
        except UpstreamError as exc:
            await _send_error(send, exc.status, exc.body, exc.headers)
            return
        except Exception:
            log.exception("advisor loop failed")
            await _send_error(send, 500, error_body("api_error", "internal error in the advisor middleware"))
            return
        payload = encode_json(message)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *forwarded_headers(orchestration.first_leg_headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _write_stream(self, orchestration: Orchestration, writer: _StreamWriter) -> None:
        # The loop (and an AppRouter's host) runs in this task and every group of events is
        # sent as it comes, in one send: what one send of the host or one network read carried
        # (docs/performance.md steps 7 and 11). http.response.start waits for the first event,
        # so a failure of the first executor leg keeps its own status and body; once started,
        # the loop reports failures as an error event itself.
        try:
            await orchestration.run(writer.write)
        except OSError:
            raise
        except Exception as exc:
            if writer.started:
                log.error("advisor loop failed after the response started", exc_info=exc)
            elif isinstance(exc, UpstreamError):
                await _send_error(writer.send, exc.status, exc.body, exc.headers)
                return
            else:
                log.error("advisor loop failed", exc_info=exc)
                await _send_error(writer.send, 500, error_body("api_error", "internal error in the advisor middleware"))
                return
        if writer.started:
            await writer.write([], more_body=False)


class _Watcher:
    """The one reader of the real ``receive`` (asgi-ecosystem §2.2): a disconnect ends every leg
    in flight (uvicorn's send() stays silent after a disconnect, so receive is the only signal):
    an ``AppRouter`` leg is told as its host would be by a server, any other is cancelled. While
    streaming it is also the keep-alive clock: it stops listening every ``ping_interval`` to ping
    if nothing was written meanwhile. One task for both instead of a second keep-alive task: each
    anyio task costs ~20 µs to start (docs/performance.md)."""

    __slots__ = ("answered", "departure", "receive", "tg", "writer")

    def __init__(self, receive: Receive, tg: TaskGroup, writer: _StreamWriter | None, departure: Departure) -> None:
        self.receive = receive
        self.tg = tg
        self.writer = writer
        self.departure = departure
        # Set once the whole response is sent: the disconnect that follows is the server's
        # end of the exchange, not the client leaving, and no ping may follow the last body.
        self.answered = False

    async def run(self) -> None:
        receive, writer = self.receive, self.writer
        while True:
            message: Message | None = None
            if writer is None or self.answered:
                message = await receive()
            else:
                with anyio.move_on_after(writer.next_check()):
                    message = await receive()
                if message is None:
                    if not self.answered:
                        await writer.ping_if_quiet()
                    continue
            if message["type"] == "http.disconnect":
                if self.answered:
                    return
                if self.departure.leave():
                    # An AppRouter leg was in flight: its host now ends it the way it ends
                    # any request whose client left (docs/reliability.md), and the loop
                    # stops on the ClientGone that comes out of it. A host that carries on
                    # is cancelled after WIND_DOWN seconds.
                    self.tg.cancel_scope.deadline = anyio.current_time() + WIND_DOWN
                else:
                    self.tg.cancel_scope.cancel()
                return


class _StreamWriter:
    """The one writer of a streaming response. The first body starts the response; after that
    the watcher pings whenever nothing was written for ``interval`` seconds (a slow advisor;
    Claude Code's idle timeout, claude-code-client §4.3). Events and pings share the ASGI
    ``send``, never two sends at once: a ping is skipped while an event is being sent, and an
    event waits for a ping that is on its way out. This replaces a producer task, a memory
    stream and a timer per event (~0.34 ms per streamed consult, docs/performance.md)."""

    __slots__ = ("_last", "_leg_headers", "_pinging", "_sending", "_tg", "interval", "send", "started")

    def __init__(self, send: Send, interval: float, tg: TaskGroup, leg_headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self._leg_headers = leg_headers  # the first executor leg's answer headers, once it has them
        self.interval = interval
        self.started = False
        self._tg = tg
        self._last = 0.0  # time.monotonic() of the last write
        self._sending = False
        self._pinging: anyio.Event | None = None

    async def write(self, group: Sequence[dict[str, Any] | RawDelta], *, more_body: bool = True) -> None:
        """Send one group of events (the loop's ``emit``) in one body; ``more_body=False`` ends
        the response. Encoding is done here rather than in a wrapper: a coroutine per level
        costs ~1,000 instructions on every relayed event (docs/performance.md, step 19)."""
        # Most groups are one event: what a host sends per send (no list, no join then).
        if len(group) == 1:
            event = group[0]
            # A RawDelta goes out as the bytes it came in.
            body = event.sse if type(event) is RawDelta else encode_event(event)
        else:
            body = b"".join([e.sse if type(e) is RawDelta else encode_event(e) for e in group])
        if self._pinging is not None:
            await self._pinging.wait()
        self._sending = True
        try:
            if not self.started:
                self.started = True
                headers = [*_SSE_HEADERS, *forwarded_headers(self._leg_headers)]
                await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            await self.send({"type": "http.response.body", "body": body, "more_body": more_body})
        except OSError as exc:
            # ASGI 2.4: the client is gone. The loop ends on a ClientGone quietly, as when a
            # leg learns it; any other failure of an emit would be reported as the loop's own.
            raise ClientGone("the client left during the response") from exc
        finally:
            self._sending = False
        self._last = time.monotonic()

    def next_check(self) -> float:
        """Seconds until a ping may be due."""
        if not self.started:
            return self.interval
        return max(0.0, self.interval - (time.monotonic() - self._last))

    async def ping_if_quiet(self) -> None:
        # No ping can follow the last body: the watcher is cancelled right after it, with no
        # checkpoint in between, and a ping is skipped while a body is being sent.
        if not self.started or self._sending or time.monotonic() - self._last < self.interval:
            return
        self._pinging = pinging = anyio.Event()
        try:
            await self.send({"type": "http.response.body", "body": _PING, "more_body": True})
        except OSError:  # ASGI 2.4 servers raise from send once the client is gone
            self._tg.cancel_scope.cancel()
            return
        finally:
            self._pinging = None
            pinging.set()
        self._last = time.monotonic()


def _too_large(cap: int) -> AdvisorRequestError:
    return AdvisorRequestError(f"request body exceeds the {cap} byte limit", status=413, error_type="request_too_large")


def _decode(raw: bytes, encoding: bytes, cap: int) -> bytes:
    """A ``content-encoding`` other than identity undone: gzip and deflate, capped at ``cap``."""
    if encoding not in (b"gzip", b"deflate"):
        raise AdvisorRequestError(f"unsupported content-encoding {encoding.decode('latin-1')!r}", status=415)
    wbits = 31 if encoding == b"gzip" else 15
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, cap + 1)
    except zlib.error:
        raise AdvisorRequestError(f"request body is not valid {encoding.decode()} data") from None
    if len(out) > cap or decoder.unconsumed_tail:
        raise _too_large(cap)
    return out


# Every name the middleware acts on is a JSON string that starts with "advisor": the tool type
# advisor_20260301, the block type advisor_tool_result, and the name advisor of a server_tool_use
# or of a tool_addition/tool_removal's tool (docs/protocol.md §1, §2, §7). Any JSON encoder
# writes each of them with this needle at its start, so prose that mentions an advisor does not
# cost a parse of the whole body. A name spelled with \u escapes ("\u0061dvisor") is missed: it
# reaches the host as sent, which answers as it would without us.
_NEEDLE = b'"advisor'

# sre finds the literal "visor" in a long body faster than bytes.find finds the needle (whose
# quote is frequent in JSON), and the pass-through of a long conversation is mostly this scan.
_VISOR = re.compile(rb"visor")
_MISSES = 16
"""Hits that are not the needle (supervisor, "my advisor") before one bytes.find settles it: a
body made of them costs one scan more, not a Python turn per hit."""


def _has_needle(data: bytes) -> bool:
    """Whether ``"advisor`` occurs in ``data``."""
    match = _VISOR.search(data)
    misses = 0
    while match is not None:
        at = match.start() - 3
        if at >= 0 and data.startswith(b'"ad', at):
            return True
        misses += 1
        if misses == _MISSES:
            # A needle before this hit would have been an earlier hit, so the search starts here.
            return data.find(_NEEDLE, max(at, 0)) >= 0
        match = _VISOR.search(data, match.end())
    return False


def _mentions_advisor(chunks: list[bytes]) -> bool:
    """Whether ``"advisor`` occurs in the body, checked chunk by chunk (a spelling split across
    two chunks included) so that a pass-through never copies the body to join it."""
    if len(chunks) == 1:
        return _has_needle(chunks[0])
    keep = len(_NEEDLE) - 1
    tail = b""
    for chunk in chunks:
        if _has_needle(chunk) or (tail and _has_needle(tail + chunk[:keep])):
            return True
        tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
    return False


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """Hand the buffered body over (in the chunks it came in), then wait on the real
    ``receive``: answering at once with a disconnect makes Django cancel the view, and a second
    ``http.request`` after the last trips its assertion (asgi-ecosystem §2.2; nginx/unit#1561)."""
    position = 0
    last = len(chunks) - 1

    async def replay() -> Message:
        nonlocal position
        if position <= last:
            i = position
            position += 1
            return {"type": "http.request", "body": chunks[i], "more_body": i < last}
        return await receive()

    return replay


def _with_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k not in (b"content-length", b"content-encoding", b"transfer-encoding")]
    out.append((b"content-length", str(length).encode()))
    return out


async def _send_error(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
