"""What the middleware reports about each orchestrated request (docs/observability.md).

Always: one INFO record per leg and one per request on the ``advisor_middleware`` logger, with
their facts as ``extra`` fields (never content). With ``opentelemetry=True`` and the ``[otel]``
extra, also the GenAI conventions' spans and metrics, made from the same facts, and every leg's
headers carry its span's trace context (W3C ``traceparent``). With logging below INFO and
OpenTelemetry off, a leg costs two clock readings.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from .accumulate import USAGE_TOKENS, token_counts
from .errors import ERROR_TYPES, ClientGone, UpstreamError, error_type_for_status
from .routers.base import OnBatch

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .accumulate import MessageAccumulator

__all__ = ["ConsultTrace", "LegTrace", "RequestTrace", "start_opentelemetry"]

log = logging.getLogger("advisor_middleware")

PROVIDER = "anthropic"  # every leg is an Anthropic Messages request, whatever model answers it
AGENT = "advisor"  # the agent a request invokes, and the tool a consult executes

_TRACE_HEADERS = (b"traceparent", b"tracestate")
_NAME_CAP = 200  # model names come from the request and the host: kept short in records
_LEG_LINE = (
    "%(leg)s leg %(model)s: %(status)s in %(duration_s).3f s, %(input_tokens)d in / %(output_tokens)d out tokens"
)
_REQUEST_LINE = "advisor request %(request_id)s: %(outcome)s in %(duration_s).3f s, %(consults)d consult(s)"


def start_opentelemetry() -> None:
    """Make the tracer and the instruments; a clear ImportError if the ``[otel]`` extra is missing."""
    try:
        _otel()
    except ImportError as exc:
        raise ImportError("opentelemetry=True needs the OpenTelemetry API: install the package's [otel] extra") from exc


class LegTrace:
    """One leg as it runs: when it started and first answered, how it ended, its span."""

    __slots__ = ("acc", "error", "first", "headers", "kind", "model", "span", "start")

    def __init__(self, kind: str, model: str, headers: list[tuple[bytes, bytes]], acc: MessageAccumulator) -> None:
        self.kind = kind
        self.model = model
        self.headers = headers
        """The leg's request headers: the trace context added when tracing."""
        self.acc = acc
        """Where the leg's answer accumulates: its model, usage and stop reason."""
        self.start = time.perf_counter()
        self.first: float | None = None
        self.error: str | None = None
        self.span: Span | None = None

    def watch(self, on_batch: OnBatch) -> OnBatch:
        """``on_batch``, noting when the leg's first events came."""

        async def first_noted(batch: Any) -> None:
            if self.first is None:
                self.first = time.perf_counter()
            await on_batch(batch)

        return first_noted

    def facts(self) -> dict[str, Any]:
        """The leg's log fields, which its span and metrics reuse: cost and timing, no content."""
        return {
            "leg": self.kind,
            "model": _name(self.acc.message.get("model")) or self.model,
            "status": self.error or "ok",
            "duration_s": round(time.perf_counter() - self.start, 6),
            "ttfb_s": None if self.first is None else round(self.first - self.start, 6),
            "stop_reason": _name(self.acc.message.get("stop_reason")) or None,
            **token_counts(self.acc.message.get("usage")),
        }


class ConsultTrace:
    """One consult of the advisor: its call id, and how it ended (set by the caller)."""

    __slots__ = ("call_id", "error_code", "span")

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.error_code: str | None = None
        """The ``advisor_tool_result_error`` code the consult ended with; None: advice."""
        self.span: Span | None = None


class RequestTrace:
    """One orchestrated request's account: ``request()`` goes around the loop, ``leg(...)``
    around each leg, ``consult(...)`` around each consult; ``fallback(...)`` notes that a consult
    moved on to another advisor model."""

    def __init__(self, *, model: Any, enabled: bool, capture_content: bool) -> None:
        self.request_id = f"advreq_{secrets.token_hex(8)}"
        self.model = _name(model)
        self.otel = _otel() if enabled else None
        self.capture_content = capture_content and enabled
        self.consults = 0
        self.outcomes: list[str] = []
        self.tokens: dict[str, dict[str, int]] = {}
        """The usage fields summed per model that answered."""

    @contextmanager
    def request(self, headers: list[tuple[bytes, bytes]]) -> Iterator[None]:
        """Around the whole loop: the ``invoke_agent`` span, and the request's log record."""
        start = time.perf_counter()
        outcome = "ok"
        with nullcontext() if self.otel is None else self.otel.request_span(self, headers) as span:
            try:
                yield
            except BaseException as exc:
                outcome = error_type(exc)
                raise
            finally:
                if self.otel is not None and span is not None:
                    self.otel.end_request(span, self, outcome)
                if log.isEnabledFor(logging.INFO):
                    self._log_request(outcome, start)

    @contextmanager
    def leg(
        self, kind: str, body: dict[str, Any], acc: MessageAccumulator, headers: list[tuple[bytes, bytes]]
    ) -> Iterator[LegTrace]:
        """Around one leg: its ``chat`` span (under the consult's, for an advisor leg), the trace
        context in its headers, its metrics and its log record."""
        leg = LegTrace(kind, _name(body.get("model")), headers, acc)
        with nullcontext() if self.otel is None else self.otel.leg_span(self, leg, body):
            try:
                yield leg
            except BaseException as exc:
                leg.error = error_type(exc)
                raise
            finally:
                self._end_leg(leg)

    @contextmanager
    def consult(self, call_id: str) -> Iterator[ConsultTrace]:
        """Around one consult: its ``execute_tool advisor`` span, parent of the advisor leg's.
        The caller sets ``error_code`` when the consult failed."""
        consult = ConsultTrace(call_id)
        self.consults += 1
        with nullcontext() if self.otel is None else self.otel.consult_span(call_id) as consult.span:
            try:
                yield consult
            except BaseException as exc:
                consult.error_code = consult.error_code or error_type(exc)
                raise
            finally:
                self.outcomes.append(consult.error_code or "ok")
                if self.otel is not None:
                    self.otel.end_consult(consult)

    def fallback(self, failed_model: str, next_model: str, error_code: str) -> None:
        """Note that a consult's advisor model failed with ``error_code`` and the consult goes on
        with ``next_model``: a log record, an event on the consult's span, the fallback counter."""
        facts = {"failed_model": _name(failed_model), "next_model": _name(next_model), "error_code": error_code}
        line = "advisor %(failed_model)s failed (%(error_code)s): falling back to %(next_model)s"
        log.info(line, facts, extra={"request_id": self.request_id, **facts})
        if self.otel is not None:
            self.otel.fallback(facts)

    def _end_leg(self, leg: LegTrace) -> None:
        logged = log.isEnabledFor(logging.INFO)
        if self.otel is None and not logged:
            return
        facts = leg.facts()
        totals = self.tokens.setdefault(facts["model"], dict.fromkeys(USAGE_TOKENS, 0))
        for key in USAGE_TOKENS:
            totals[key] += facts[key]
        if self.otel is not None:
            self.otel.end_leg(leg, facts, self.capture_content)
        if logged:
            log.info(_LEG_LINE, facts, extra={"request_id": self.request_id, **facts})

    def _log_request(self, outcome: str, start: float) -> None:
        facts = {
            "request_id": self.request_id,
            "model": self.model,
            "outcome": outcome,
            "duration_s": round(time.perf_counter() - start, 6),
            "consults": self.consults,
            "consult_outcomes": self.outcomes,
            "tokens": self.tokens,
        }
        log.info(_REQUEST_LINE, facts, extra=facts)


def error_type(exc: BaseException) -> str:
    """A short, low-cardinality name for how a leg or request failed (``error.type``)."""
    if isinstance(exc, ClientGone):
        return "client_gone"
    if isinstance(exc, UpstreamError):
        kind = exc.kind  # the host's words: kept only if it is one of Anthropic's types
        return kind if kind in ERROR_TYPES else error_type_for_status(exc.status)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if not isinstance(exc, Exception):
        return "cancelled"
    return type(exc).__qualname__


@functools.cache
def _otel() -> _Otel:
    return _Otel()


class _Otel:
    """The tracer, the instruments and the propagator: made once, on first use, from the global
    providers (the OpenTelemetry API's proxies follow a provider set later)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, propagate, trace

        from . import __version__

        self.trace = trace
        self.propagate = propagate
        self.tracer = trace.get_tracer("advisor_middleware", __version__)
        meter = metrics.get_meter("advisor_middleware", __version__)
        # The buckets are the conventions' advice.
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens of one leg, input (cache reads and writes included) and output",
            explicit_bucket_boundaries_advisory=[4.0**n for n in range(14)],
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of one leg",
            explicit_bucket_boundaries_advisory=[0.01 * 2**n for n in range(14)],
        )
        self.consults = meter.create_counter(
            "advisor_middleware.consults", unit="{consult}", description="Consults, by outcome"
        )
        self.fallbacks = meter.create_counter(
            "advisor_middleware.fallbacks", unit="{fallback}", description="Advisor fallbacks taken"
        )

    def span(self, name: str, attributes: dict[str, Any], **options: Any) -> AbstractContextManager[Span]:
        # Exceptions are not recorded on spans: their messages may quote what an upstream said.
        return self.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False, **options
        )

    def request_span(self, request: RequestTrace, headers: list[tuple[bytes, bytes]]) -> AbstractContextManager[Span]:
        # Under the host's own span when it has one, else under the caller's traceparent.
        parent = None
        if not self.trace.get_current_span().get_span_context().is_valid:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in _TRACE_HEADERS}
            parent = self.propagate.extract(carrier)
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": request.model,
            "advisor_middleware.request_id": request.request_id,
        }
        return self.span(f"invoke_agent {AGENT}", attributes, context=parent)

    def end_request(self, span: Span, request: RequestTrace, outcome: str) -> None:
        totals = request.tokens.values()
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": sum(_input_tokens(t) for t in totals),
                "gen_ai.usage.output_tokens": sum(t["output_tokens"] for t in totals),
                "advisor_middleware.consults": request.consults,
            }
        )
        if outcome != "ok":
            self._fail(span, outcome)

    @contextmanager
    def leg_span(self, request: RequestTrace, leg: LegTrace, body: dict[str, Any]) -> Iterator[None]:
        attributes = {**_chat_labels(leg), "gen_ai.request.stream": bool(body.get("stream"))}
        if isinstance(body.get("max_tokens"), int):
            attributes["gen_ai.request.max_tokens"] = body["max_tokens"]
        if request.capture_content:
            attributes["gen_ai.input.messages"] = _messages_json(body.get("messages") or [])
            if body.get("system"):
                attributes["gen_ai.system_instructions"] = json.dumps(body["system"], ensure_ascii=False, default=str)
        with self.span(f"chat {leg.model}", attributes, kind=self.trace.SpanKind.CLIENT) as leg.span:
            leg.headers = self._with_context(leg.headers)
            yield

    def end_leg(self, leg: LegTrace, facts: dict[str, Any], capture_content: bool) -> None:
        span = leg.span
        assert span is not None
        message = leg.acc.message
        stop = facts["stop_reason"]
        attributes = {
            "gen_ai.response.model": facts["model"],
            "gen_ai.response.finish_reasons": [stop] if stop else None,
            "gen_ai.response.id": _name(message.get("id")) or None,
            "gen_ai.response.time_to_first_chunk": facts["ttfb_s"],
        }
        reported = isinstance(message.get("usage"), dict)
        inputs = _input_tokens(facts)
        if reported:
            attributes["gen_ai.usage.input_tokens"] = inputs
            attributes["gen_ai.usage.output_tokens"] = facts["output_tokens"]
            attributes["gen_ai.usage.cache_read.input_tokens"] = facts["cache_read_input_tokens"]
            attributes["gen_ai.usage.cache_creation.input_tokens"] = facts["cache_creation_input_tokens"]
        if capture_content and leg.acc.finished and leg.error is None:
            attributes["gen_ai.output.messages"] = _messages_json([{"role": "assistant", **leg.acc.complete()}])
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        labels = {**_chat_labels(leg), "gen_ai.response.model": facts["model"]}
        if leg.error is not None:
            self._fail(span, leg.error)
            labels["error.type"] = leg.error
        self.duration.record(facts["duration_s"], labels)
        if reported:
            self.tokens.record(inputs, {**labels, "gen_ai.token.type": "input"})
            self.tokens.record(facts["output_tokens"], {**labels, "gen_ai.token.type": "output"})

    def consult_span(self, call_id: str) -> AbstractContextManager[Span]:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": AGENT,
            "gen_ai.tool.type": "extension",
            "gen_ai.tool.call.id": call_id,
        }
        return self.span(f"execute_tool {AGENT}", attributes)

    def end_consult(self, consult: ConsultTrace) -> None:
        span = consult.span
        assert span is not None
        outcome = consult.error_code or "ok"
        span.set_attribute("advisor_middleware.consult.outcome", outcome)
        if consult.error_code is not None:
            span.set_attribute("advisor_middleware.consult.error_code", consult.error_code)
            self._fail(span, consult.error_code)
        self.consults.add(1, {"advisor_middleware.consult.outcome": outcome})

    def fallback(self, facts: dict[str, str]) -> None:
        self.trace.get_current_span().add_event("advisor_middleware.fallback", facts)  # the consult's
        self.fallbacks.add(1, {"error.type": facts["error_code"], "gen_ai.request.model": facts["failed_model"]})

    def _fail(self, span: Span, kind: str) -> None:
        span.set_attribute("error.type", kind)
        span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, kind))

    def _with_context(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` with the current span's trace context in place of the caller's."""
        carrier: dict[str, str] = {}
        self.propagate.inject(carrier)
        kept = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
        return [*kept, *((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())]


def _chat_labels(leg: LegTrace) -> dict[str, Any]:
    """What a leg's span starts with and its metrics are recorded by."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": leg.model,
        "advisor_middleware.leg": leg.kind,
    }


def _messages_json(messages: list[Any]) -> str:
    """Anthropic messages in the conventions' shape: a role and its parts."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        out.append({"role": message.get("role"), "parts": [_part(b) for b in blocks if isinstance(b, dict)]})
    return json.dumps(out, ensure_ascii=False, default=str)


def _part(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "content": block.get("text")}
    if kind == "thinking":
        return {"type": "reasoning", "content": block.get("thinking")}
    if kind in ("tool_use", "server_tool_use"):
        return {"type": "tool_call", "id": block.get("id"), "name": block.get("name"), "arguments": block.get("input")}
    if kind in ("tool_result", "advisor_tool_result"):
        return {"type": "tool_call_response", "id": block.get("tool_use_id"), "response": block.get("content")}
    return {"type": kind, **{k: v for k, v in block.items() if k != "type"}}


def _input_tokens(usage: dict[str, int]) -> int:
    # The conventions' Anthropic rule: input tokens count the cache's reads and writes.
    return usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]


def _name(value: Any) -> str:
    return value[:_NAME_CAP] if isinstance(value, str) else ""
