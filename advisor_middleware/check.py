"""``advisor-middleware check URL``: probe a deployed gateway the way a client would.

Three requests go to ``URL/v1/messages``, each with the advisor tool: a forced consult
(``tool_choice`` on the advisor, so a real model consults too) streamed, the same request as
JSON, and a second turn that sends the streamed answer back as history. Each answer is held to
the rules of docs/protocol.md (§2 blocks, §3 stream events, §4 usage), the rules the test suite
holds the middleware to: the rule functions here (``order_problem``, ``index_problem``, ...) are
the ones the tests use. The report is one line per check and a timeline of the consult.

The official SDK (``anthropic``, the ``check`` extra) is imported only by the check that needs it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson
import pydantic_core

from .accumulate import MessageAccumulator
from .blocks import ADVISOR_ERROR_CODES
from .errors import UpstreamError
from .routers.http import parse_base_url, upstream_url
from .sse import SSEDecoder, parse_event

DEFAULT_MODEL = "claude-sonnet-5-5"
DEFAULT_ADVISOR = "claude-opus-5-5"
INSTALL_SDK = "pip install 'asgi-advisor[check]'"
MAX_ANSWER_BYTES = 32 * 1024 * 1024
"""The most of one answer the command reads (Anthropic's own cap on a request body)."""

QUESTION = "Plan a small team offsite in three short steps. Ask the advisor first."
FOLLOW_UP = "Thanks. What was the advisor's main point, in one sentence?"

RULES = {
    "status": "2xx, with a Message (JSON) or an event stream",
    "history": "2xx for the first answer sent back as history, advisor blocks and all (§6)",
    "event-order": "message_start first; message_delta after the last block; message_stop last (§3)",
    "indices": "blocks start at 0, 1, 2, ...; deltas and stops name an open block (§3)",
    "advisor-call": "server_tool_use named advisor, id srvtoolu_..., input {} (§2)",
    "advisor-result": "advisor_tool_result naming its call, content one known object, no deltas (§2, §3)",
    "advice": "the advisor answered: no advisor_tool_result_error (§2)",
    "iterations": "usage.iterations: message, advisor_message with its model, message (§4)",
    "usage-total": "top-level usage sums the executor (message) iterations only (§4)",
    "sdk": "the official SDK builds the streamed answer; its blocks are the JSON answer's",
}
"""Each check's rule, as the report states it (sections of docs/protocol.md)."""

_SRV_ID = re.compile(r"^srvtoolu_[a-zA-Z0-9_]+$")
_RESULT_FIELDS = {"advisor_result": "text", "advisor_redacted_result": "encrypted_content"}
_TOKENS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

Event = Mapping[str, Any]


# --- the rules: each returns why it does not hold, or None --------------------------------------


def order_problem(events: Sequence[Event]) -> str | None:
    """``event-order`` over a stream's events (their data, ``type`` included). A stream that an
    ``error`` event ends keeps the order (§5): ``error_problem`` says whether it ended so."""
    if not events or events[0].get("type") != "message_start":
        first = events[0].get("type") if events else "nothing"
        return f"the stream starts with {first}, not message_start"
    ended = False  # a message_delta came: only pings, message_delta and the end may follow
    for position, event in enumerate(events[1:], 1):
        kind = event.get("type")
        if kind == "message_start":
            return f"a second message_start at event {position}"
        if kind in ("message_stop", "error") and position != len(events) - 1:
            return f"{events[position + 1].get('type')} after {kind}"
        if ended and kind not in ("ping", "message_delta", "message_stop", "error"):
            return f"{kind} after message_delta (event {position})"
        ended = ended or kind == "message_delta"
    last = events[-1].get("type")
    if last not in ("message_stop", "error"):
        return f"the stream ends with {last}, not message_stop"
    return None if ended or last == "error" else "no message_delta before message_stop"


class _Blocks:
    """The blocks a stream has started and not stopped yet, and the index the next one takes."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.next_index = 0

    def step(self, event: Event) -> str | None:
        """Takes one event; why it breaks the ``indices`` rule, or None."""
        kind, index = event.get("type"), event.get("index")
        if kind == "content_block_start":
            if index != self.next_index:
                return f"content_block_start at index {index!r}, where {self.next_index} was next"
            self.open.add(index)
            self.next_index += 1
        elif kind in ("content_block_delta", "content_block_stop"):
            if index not in self.open:
                return f"{kind} for block {index!r}, which is not open"
            if kind == "content_block_stop":
                self.open.discard(index)
        elif kind in ("message_delta", "message_stop", "error") and self.open:
            return f"{kind} while block {min(self.open)} is still open"
        return None


def index_problem(events: Sequence[Event]) -> str | None:
    """``indices``: blocks start at 0 and go up by one; deltas and stops name an open block;
    none is open at ``message_delta``, ``message_stop`` or ``error``."""
    blocks = _Blocks()
    for position, event in enumerate(events):
        problem = blocks.step(event)
        if problem:
            return f"{problem} (event {position})"
    return None


def error_problem(events: Sequence[Event]) -> str | None:
    """An ``error`` event in the stream: the request failed after it started."""
    for event in events:
        if event.get("type") == "error":
            error = event.get("error") or {}
            return f"the stream ended with an error event: {error.get('type')}: {error.get('message')}"
    return None


def block_problem(content: Sequence[Event], *, required: bool = True) -> str | None:
    """``advisor-call``: every ``server_tool_use`` is the advisor's, in its native shape; with
    ``required``, there is at least one (the probe forced a consult)."""
    calls = [block for block in content if block.get("type") == "server_tool_use"]
    if required and not calls:
        types = ", ".join(str(block.get("type")) for block in content) or "no blocks"
        return f"no server_tool_use block (the answer holds {types}): the forced consult did not happen"
    for block in calls:
        if block.get("name") != "advisor":
            return f"server_tool_use named {block.get('name')!r}, not 'advisor'"
        if not _SRV_ID.match(str(block.get("id"))):
            return f"server_tool_use id {block.get('id')!r} does not match srvtoolu_[a-zA-Z0-9_]+"
        if block.get("input") != {}:
            return f"server_tool_use input is {block.get('input')!r}, not {{}}"
    return None


def result_problem(content: Sequence[Event]) -> str | None:
    """``advisor-result``: each result names an earlier call, each call has a result, and the
    result's ``content`` is one object of a known type."""
    calls: list[Any] = []
    answered: set[Any] = set()
    for position, block in enumerate(content):
        if block.get("type") == "server_tool_use":
            calls.append(block.get("id"))
        if block.get("type") != "advisor_tool_result":
            continue
        call_id = block.get("tool_use_id")
        if call_id not in calls:
            return f"advisor_tool_result (block {position}) names {call_id!r}, which no server_tool_use before it has"
        answered.add(call_id)
        problem = _result_content_problem(block.get("content"))
        if problem:
            return f"advisor_tool_result (block {position}): {problem}"
    missing = [call_id for call_id in calls if call_id not in answered]
    return f"server_tool_use {missing[0]!r} has no advisor_tool_result" if missing else None


def _result_content_problem(result: Any) -> str | None:
    if not isinstance(result, dict):
        return f"content is {type(result).__name__}, not one object"
    kind = result.get("type")
    if kind in _RESULT_FIELDS:
        name = _RESULT_FIELDS[kind]
        return None if isinstance(result.get(name), str) else f"{kind} without a string {name}"
    if kind == "advisor_tool_result_error":
        code = result.get("error_code")
        return None if code in ADVISOR_ERROR_CODES else f"error_code {code!r} is not one of the seven"
    return f"content type {kind!r} is not advisor_result, advisor_redacted_result or advisor_tool_result_error"


def advice_problem(content: Sequence[Event]) -> str | None:
    """``advice``: no consult failed."""
    for block in content:
        result = block.get("content")
        if block.get("type") == "advisor_tool_result" and isinstance(result, dict):
            if result.get("type") == "advisor_tool_result_error":
                return f"the advisor failed: advisor_tool_result_error {result.get('error_code')!r}"
    return None


def _consults(content: Sequence[Event]) -> int:
    """Consults that ran an advisor (a ``max_uses_exceeded`` result runs none, §4)."""
    return sum(
        1
        for block in content
        if block.get("type") == "advisor_tool_result"
        and (block.get("content") or {}).get("error_code") != "max_uses_exceeded"
    )


def iterations_problem(message: Event) -> str | None:
    """``iterations``: one ``advisor_message`` (with its ``model``) per consult that ran, between
    executor ``message`` iterations."""
    content = message.get("content") or []
    iterations = (message.get("usage") or {}).get("iterations")
    consults = _consults(content)
    if iterations is None and not consults:
        return None
    if not isinstance(iterations, list) or not all(isinstance(item, dict) for item in iterations):
        return f"usage.iterations is {type(iterations).__name__}, not a list of objects, with {consults} consult(s)"
    kinds = [item.get("type") for item in iterations]
    if kinds.count("advisor_message") != consults:
        return f"{kinds.count('advisor_message')} advisor_message iteration(s) for {consults} consult(s): {kinds}"
    if not kinds or kinds[0] != "message" or kinds[-1] != "message" or set(kinds) - {"message", "advisor_message"}:
        return f"iterations {kinds} do not start and end with message, or hold another type"
    for position, item in enumerate(iterations):
        if item["type"] == "advisor_message" and not (isinstance(item.get("model"), str) and item["model"]):
            return f"advisor_message iteration {position} has no model"
        if not all(isinstance(item.get(key), int) for key in ("input_tokens", "output_tokens")):
            return f"iteration {position} lacks integer input_tokens and output_tokens"
    return None


def usage_total_problem(message: Event) -> str | None:
    """``usage-total``: each top-level token field is the sum over the ``message`` iterations."""
    usage = message.get("usage") or {}
    iterations = usage.get("iterations")
    if not isinstance(iterations, list):
        return None  # nothing to sum; iterations_problem says whether that is right
    for key in _TOKENS:
        executor = sum(_count(item, key) for item in iterations if item.get("type") == "message")
        advisor = sum(_count(item, key) for item in iterations if item.get("type") == "advisor_message")
        total = _count(usage, key)
        if total != executor:
            hint = ": it includes the advisor's tokens" if advisor and total == executor + advisor else ""
            return f"usage.{key} is {total}, the executor iterations sum to {executor}{hint}"
    return None


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) else 0


# --- probing ------------------------------------------------------------------------------------


@dataclass
class Options:
    """What ``check`` sends, and where."""

    url: str
    """The gateway's base URL (what clients set as ``ANTHROPIC_BASE_URL``)."""
    key: str | None = None
    model: str = DEFAULT_MODEL
    advisor: str = DEFAULT_ADVISOR
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 300.0


@dataclass
class Answer:
    """What one request got back, as a client saw it."""

    status: int = 0
    problem: str | None = None
    """Why it is not a usable answer (status, content type, body); None when it is."""
    raw: bytes = b""
    arrivals: list[float] = field(default_factory=list)
    """Seconds from sending the request to each event's arrival (streamed answers)."""
    names: list[str] = field(default_factory=list)
    """Each event's ``event:`` name, as the stream gave it."""
    events: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] = field(default_factory=dict)
    """The Message: the JSON answer, or the stream accumulated."""
    unbuilt: str | None = None
    """Why the stream's events do not build a Message (the event rules say which is wrong)."""

    @property
    def usable(self) -> bool:
        """A Message came back, to check and to send back as history."""
        return self.problem is None and self.unbuilt is None


def request_body(options: Options, *, stream: bool, history: list[Any] | None = None) -> dict[str, Any]:
    """A forced consult (§1), or with ``history`` a second turn in which the model may consult."""
    body: dict[str, Any] = {
        "model": options.model,
        "max_tokens": 1024,
        "stream": stream,
        "messages": history or [{"role": "user", "content": QUESTION}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": options.advisor}],
    }
    if history is None:
        body["tool_choice"] = {"type": "tool", "name": "advisor"}
    return body


def _headers(options: Options) -> dict[str, str]:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "advisor-tool-2026-03-01"}
    if options.key:
        headers["x-api-key"] = options.key
    headers.update(options.headers)
    return headers


def _read(response: httpx.Response, answer: Answer, started: float) -> None:
    """The body, at most ``MAX_ANSWER_BYTES``; a stream's events with their arrival times."""
    streaming = response.headers.get("content-type", "").startswith("text/event-stream")
    decoder = SSEDecoder()
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            answer.problem = f"the answer is over {MAX_ANSWER_BYTES} bytes"
            return
        chunks.append(chunk)
        if streaming:
            _add_events(answer, decoder.feed(chunk), time.monotonic() - started)
    answer.raw = b"".join(chunks)


def _add_events(answer: Answer, decoded: list[tuple[str, bytes]], at: float) -> None:
    for name, data in decoded:
        event = parse_event(name, data)
        if isinstance(event, UpstreamError):
            event = {"type": "unreadable", "reason": event.detail}
        answer.arrivals.append(at)
        answer.names.append(name)
        answer.events.append(event)


def probe(client: httpx.Client, url: httpx.URL, body: dict[str, Any]) -> Answer:
    """Send ``body``; read the answer the way its ``stream`` flag asks for."""
    answer = Answer()
    started = time.monotonic()
    with client.stream("POST", url, content=orjson.dumps(body), headers={"content-type": "application/json"}) as got:
        answer.status = got.status_code
        _read(got, answer, started)
        kind = got.headers.get("content-type", "")
    if answer.problem is None:
        answer.problem = _answer_problem(answer, kind, streamed=body["stream"])
    return answer


def _answer_problem(answer: Answer, kind: str, *, streamed: bool) -> str | None:
    """``status``: a 2xx with the right content type and a Message; fills ``answer.message``."""
    if not 200 <= answer.status < 300:
        return f"HTTP {answer.status}: {_error_text(answer.raw)}"
    wanted = "text/event-stream" if streamed else "application/json"
    if not kind.startswith(wanted):
        return f"HTTP {answer.status} with content-type {kind or 'none'!r}, not {wanted}"
    if streamed:
        if not answer.events:
            return "the stream holds no events"
        accumulator = MessageAccumulator()
        try:
            for event in answer.events:
                accumulator.feed(event)
            accumulator.complete()
        except UpstreamError as exc:
            answer.unbuilt = exc.detail
        answer.message = accumulator.message
        return None
    try:
        message = pydantic_core.from_json(answer.raw)
    except ValueError:
        return "the body is not JSON"
    is_message = isinstance(message, dict) and message.get("type") == "message"
    if not is_message or not isinstance(message.get("content"), list):
        return "the body is not a Message (type 'message' with a content list)"
    answer.message = message
    return None


def _error_text(raw: bytes) -> str:
    """An error body's ``type: message`` (§5), or its first bytes."""
    try:
        error = pydantic_core.from_json(raw).get("error") or {}
        return f"{error['type']}: {str(error['message'])[:300]}"
    except (ValueError, AttributeError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace") or "(empty body)"


# --- the official SDK as the oracle ---------------------------------------------------------------


class SDKMissing(Exception):
    """The ``anthropic`` package is not installed (the ``check`` extra)."""


def sdk_problem(streamed: Answer, answered: Answer, body: dict[str, Any]) -> str | None:
    """``sdk``: the SDK, given the bytes each answer came in, builds the streamed Message with its
    accumulator and parses the JSON one; both have the same shape (:func:`shape`)."""
    try:
        import anthropic
        import httpx2
    except ImportError:
        raise SDKMissing from None

    def sdk_replaying(answer: Answer, kind: str) -> anthropic.Anthropic:
        response = httpx2.Response(200, content=answer.raw, headers={"content-type": kind})
        http = httpx2.Client(transport=httpx2.MockTransport(lambda request: response))
        return anthropic.Anthropic(api_key="replay", base_url="http://replay", http_client=http, max_retries=0)

    params = {key: value for key, value in body.items() if key != "stream"}
    try:
        with sdk_replaying(streamed, "text/event-stream") as sdk, sdk.beta.messages.stream(**params) as stream:
            built = stream.get_final_message().model_dump(mode="json", exclude_none=True)
    except Exception as exc:  # whatever the SDK raises on these bytes is the finding
        return f"the SDK's accumulator failed on the streamed answer: {type(exc).__name__}: {str(exc)[:300]}"
    try:
        with sdk_replaying(answered, "application/json") as sdk:
            parsed = sdk.beta.messages.create(**params).model_dump(mode="json", exclude_none=True)
    except Exception as exc:
        return f"the SDK failed on the JSON answer: {type(exc).__name__}: {str(exc)[:300]}"
    if shape(built) != shape(parsed):
        return f"streamed {shape(built)} but JSON {shape(parsed)}"
    return None


def shape(message: Mapping[str, Any]) -> str:
    """What two answers to one request share, even from a real model: the block types (a run of
    text or thinking counted once, a result with its content type) and the iteration types."""
    kinds: list[str] = []
    for block in message.get("content") or []:
        kind = str(block.get("type"))
        if kind == "advisor_tool_result":
            kind += f"({(block.get('content') or {}).get('type')})"
        if not (kinds and kinds[-1] == kind and kind in ("text", "thinking")):
            kinds.append(kind)
    iterations = (message.get("usage") or {}).get("iterations") or []
    return f"[{', '.join(kinds)}] iterations [{', '.join(str(item.get('type')) for item in iterations)}]"


# --- the timeline -----------------------------------------------------------------------------------


@dataclass
class Leg:
    """One sampling of a consult as the client saw it: seconds from the request."""

    kind: str
    """``executor`` or ``advisor``."""
    model: str | None
    start: float
    end: float
    first_byte: float | None
    """When its first event arrived (an advisor's result arrives whole: None)."""
    input_tokens: int | None = None
    output_tokens: int | None = None


def timeline(answer: Answer) -> list[Leg]:
    """The legs of a streamed answer, from its events' arrival times: an executor leg up to each
    ``server_tool_use``, the advisor up to its ``advisor_tool_result``, the executor again up to
    ``message_stop``; tokens and models from ``usage.iterations``."""
    if not answer.events:
        return []
    calls: list[float] = []
    results: list[tuple[float, float]] = []
    for position, event in enumerate(answer.events):
        block_type = (event.get("content_block") or {}).get("type")
        if block_type == "server_tool_use":
            calls.append(answer.arrivals[position])
        elif block_type == "advisor_tool_result":
            results.append((answer.arrivals[position], _next_arrival(answer, position)))
    model = answer.message.get("model")
    legs: list[Leg] = []
    start, first_byte = 0.0, answer.arrivals[0]
    for called, (returned, resumed) in zip(calls, results, strict=False):
        legs.append(Leg("executor", model, start, called, first_byte))
        legs.append(Leg("advisor", None, called, returned, None))
        start, first_byte = returned, resumed
    legs.append(Leg("executor", model, start, answer.arrivals[-1], first_byte))
    _add_tokens(legs, (answer.message.get("usage") or {}).get("iterations"))
    return legs


def _next_arrival(answer: Answer, position: int) -> float:
    """When the executor's next event came, after the result at ``position``."""
    for at, event in zip(answer.arrivals[position + 1 :], answer.events[position + 1 :], strict=True):
        if event.get("type") not in ("ping", "content_block_stop"):
            return at
    return answer.arrivals[-1]


def _add_tokens(legs: list[Leg], iterations: Any) -> None:
    if not isinstance(iterations, list):
        return
    for kind, name in (("executor", "message"), ("advisor", "advisor_message")):
        usages = [item for item in iterations if isinstance(item, dict) and item.get("type") == name]
        for leg, usage in zip([leg for leg in legs if leg.kind == kind], usages, strict=False):
            leg.input_tokens, leg.output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
            leg.model = usage.get("model", leg.model)


def _bar(leg: Leg, total: float, width: int = 32) -> str:
    start = min(round(leg.start / total * width), width - 1) if total else 0
    end = max(start + 1, round(leg.end / total * width) if total else width)
    return " " * start + "█" * (end - start) + " " * (width - end)


def _leg_line(leg: Leg, total: float) -> str:
    first = "  -   " if leg.first_byte is None else f"{leg.first_byte - leg.start:5.2f}s"
    tokens = f"{leg.input_tokens} in, {leg.output_tokens} out" if leg.input_tokens is not None else "tokens ?"
    return (
        f"  {leg.kind:<8}  {leg.model or '?':<18} |{_bar(leg, total)}| "
        f"{leg.start:5.2f}s {leg.end - leg.start:5.2f}s {first}  {tokens}"
    )


# --- the report -------------------------------------------------------------------------------------


class NotChecked(str):
    """Why a check could not run (it has not passed either)."""


@dataclass
class CheckResult:
    """One rule held against one answer."""

    probe: str
    """``streamed``, ``json`` or ``turn 2``."""
    rule: str
    """A key of :data:`RULES`."""
    passed: bool | None
    """None: not checked (the detail says why)."""
    detail: str


@dataclass
class Report:
    """What ``check`` found: one result per check, and the streamed consult's legs."""

    url: str
    model: str
    advisor: str
    results: list[CheckResult] = field(default_factory=list)
    timeline: list[Leg] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check ran and passed: the exit status is 0 only then."""
        return bool(self.results) and all(result.passed for result in self.results)

    def add(self, probe: str, checks: Iterable[tuple[str, str | None]]) -> None:
        """One result per (rule, why it does not hold or None); a :class:`NotChecked` reason is
        a check that could not run."""
        for rule, problem in checks:
            passed = None if isinstance(problem, NotChecked) else problem is None
            self.results.append(CheckResult(probe, rule, passed, problem or RULES[rule]))

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "advisor": self.advisor,
            "ok": self.ok,
            "checks": [asdict(result) for result in self.results],
            "timeline": [asdict(leg) for leg in self.timeline],
        }

    def text(self) -> str:
        lines = [f"advisor-middleware check {self.url}", f"executor {self.model}, advisor {self.advisor}", ""]
        for result in self.results:
            verdict = {True: "pass", False: "FAIL", None: "skip"}[result.passed]
            lines.append(f"  {verdict}  {result.probe:<8}  {result.rule:<14}  {result.detail}")
        failed = sum(result.passed is False for result in self.results)
        skipped = sum(result.passed is None for result in self.results)
        lines += ["", f"{len(self.results)} checks: {failed} failed, {skipped} not checked."]
        if self.timeline:
            total = max(leg.end for leg in self.timeline)
            lines += [
                "",
                f"Timeline of the streamed consult: {total:.2f} s to message_stop. Derived from when its events",
                "arrived here (message_start, server_tool_use, advisor_tool_result, message_stop): a remote",
                "gateway's legs are not seen separately. first: the leg's first event, after its start;",
                "tokens and models: usage.iterations.",
                f"  {'leg':<8}  {'model':<18} |{'':<32}| {'start':>6} {'took':>6} {'first':>6}  tokens",
                *(_leg_line(leg, total) for leg in self.timeline),
            ]
        return "\n".join(lines)


# --- running it -------------------------------------------------------------------------------------


def messages_url(base: str) -> httpx.URL:
    """``base`` (a gateway's base URL, or its ``/v1/messages`` URL) as the Messages URL."""
    url = parse_base_url(base)
    path = url.raw_path.rstrip(b"/")
    if path.endswith(b"/v1/messages"):
        url = url.copy_with(raw_path=path[: -len(b"/v1/messages")] or b"/")
    return upstream_url(url, b"/v1/messages")


def run_check(options: Options) -> Report:
    """Probe ``options.url``; raises ``httpx.HTTPError`` when the gateway cannot be reached."""
    url = messages_url(options.url)
    report = Report(str(url), options.model, options.advisor)
    timeout = httpx.Timeout(options.timeout, connect=min(options.timeout, 10.0))
    with httpx.Client(timeout=timeout, headers=_headers(options)) as client:
        first = request_body(options, stream=True)
        streamed = probe(client, url, first)
        answered = probe(client, url, request_body(options, stream=False))
        report.add("streamed", _stream_checks(streamed, required=True))
        report.results.append(_sdk_check(streamed, answered, first))
        report.add("json", _message_checks(answered, required=True))
        source = streamed if streamed.usable else answered
        if not source.usable:
            report.add("turn 2", [("history", "not sent: neither first answer can be sent back")])
        else:
            history = [first["messages"][0], {"role": "assistant", "content": source.message["content"]}]
            history.append({"role": "user", "content": FOLLOW_UP})
            second = probe(client, url, request_body(options, stream=True, history=history))
            report.add("turn 2", _stream_checks(second, required=False, status="history"))
    if streamed.usable:
        report.timeline = timeline(streamed)
    return report


def _message_checks(answer: Answer, *, required: bool, status: str = "status") -> list[tuple[str, str | None]]:
    if answer.problem is not None:
        return [(status, answer.problem)]
    content = answer.message.get("content") or []
    checks: list[tuple[str, str | None]] = [
        ("advisor-call", block_problem(content, required=required)),
        ("advisor-result", result_problem(content) or whole_result_problem(answer.events)),
        ("advice", advice_problem(content)),
        ("iterations", iterations_problem(answer.message)),
        ("usage-total", usage_total_problem(answer.message)),
    ]
    if answer.unbuilt is not None:
        why = NotChecked("not checked: the events build no Message (see event-order and indices)")
        checks = [(rule, why) for rule, _ in checks]
    return [(status, None), *checks]


def _stream_checks(answer: Answer, *, required: bool, status: str = "status") -> list[tuple[str, str | None]]:
    checks = _message_checks(answer, required=required, status=status)
    if answer.problem is not None:
        return checks
    events = answer.events
    order = _name_problem(answer) or order_problem(events) or error_problem(events)
    checks[1:1] = [("event-order", order), ("indices", index_problem(events))]
    return checks


def _name_problem(answer: Answer) -> str | None:
    for position, (name, event) in enumerate(zip(answer.names, answer.events, strict=True)):
        if event.get("type") == "unreadable":
            return f"event {position} ({name}): {event['reason']}"
        if name != event.get("type"):
            return f"event {position} is named {name!r} but its data's type is {event.get('type')!r}"
    return None


def whole_result_problem(events: Sequence[Event]) -> str | None:
    """An ``advisor_tool_result`` arrives complete at its start: no delta names it (§3)."""
    results = {
        event.get("index")
        for event in events
        if event.get("type") == "content_block_start"
        and (event.get("content_block") or {}).get("type") == "advisor_tool_result"
    }
    for event in events:
        if event.get("type") == "content_block_delta" and event.get("index") in results:
            return f"a content_block_delta for the advisor_tool_result at index {event.get('index')}"
    return None


def _sdk_check(streamed: Answer, answered: Answer, body: dict[str, Any]) -> CheckResult:
    if streamed.problem is not None or answered.problem is not None:
        return CheckResult("streamed", "sdk", False, "not compared: an answer failed (see status)")
    try:
        problem = sdk_problem(streamed, answered, body)
    except SDKMissing:
        return CheckResult("streamed", "sdk", None, f"not checked: the official SDK is not installed: {INSTALL_SDK}")
    return CheckResult("streamed", "sdk", problem is None, problem or RULES["sdk"])


# --- the command ------------------------------------------------------------------------------------

_PROG = "advisor-middleware check"


def add_check_command(commands: Any) -> None:
    """Adds ``check`` to the CLI's subcommands (``commands``, from ``add_subparsers``)."""
    check = commands.add_parser(
        "check",
        help="probe a deployed gateway's advisor support the way a client would",
        description=(
            "Send a forced consult to URL/v1/messages, streamed and as JSON, then a second turn with "
            "that answer as history; check every answer against the advisor protocol (event order, "
            "block indices, the native advisor blocks, usage iterations, the official SDK's "
            "accumulator) and print one line per check and a timeline of the consult."
        ),
        epilog="exit status: 0 every check passed, 1 one failed or could not run, 2 the gateway did not answer",
    )
    check.add_argument("url", metavar="URL", type=_base_url, help="the gateway's base URL (ANTHROPIC_BASE_URL)")
    check.add_argument("--key", help="API key, sent as x-api-key")
    check.add_argument("--model", default=DEFAULT_MODEL, help="executor model (default: %(default)s)")
    check.add_argument("--advisor", default=DEFAULT_ADVISOR, help="advisor model (default: %(default)s)")
    check.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME:VALUE",
        help="an extra request header (repeatable), e.g. 'authorization: Bearer sk-...'",
    )
    check.add_argument(
        "--timeout", type=_timeout, default=300.0, metavar="SECONDS", help="longest wait for bytes (default: 300)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def _base_url(value: str) -> str:
    try:
        messages_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME:VALUE")
    return name.strip(), content.strip()


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def check_main(args: argparse.Namespace) -> int:
    """Runs ``check`` with parsed arguments: prints the report; 0 if every check passed, 1 if
    one did not, 2 if the gateway could not be reached (one line on stderr)."""
    options = Options(args.url, args.key, args.model, args.advisor, list(args.header), args.timeout)
    try:
        report = run_check(options)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        what = "cannot reach" if isinstance(exc, httpx.ConnectError) else "request failed at"
        print(f"{_PROG}: {what} {messages_url(args.url)}: {reason}", file=sys.stderr, flush=True)
        return 2
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode(), flush=True)
    else:
        print(report.text(), flush=True)
    return 0 if report.ok else 1
