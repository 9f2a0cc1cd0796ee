"""``advisor-middleware check URL``: probe a deployed gateway the way a client would.

Three requests go to ``URL/v1/messages`` with the advisor tool: a forced consult streamed, the
same request as JSON, and a second turn that sends the first answer back as history. Each answer
is held to the rules of docs/protocol.md; the tests hold the middleware to the same functions.
The official SDK (``anthropic``, the ``check`` extra) is imported only by the check that needs it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson

from .accumulate import USAGE_TOKENS, MessageAccumulator, token_count
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
_RESULT_FIELDS = {
    "advisor_result": "text",
    "advisor_redacted_result": "encrypted_content",
    "advisor_tool_result_error": "error_code",
}
_SSE = "text/event-stream"
_HEADERS = {"anthropic-version": "2023-06-01", "anthropic-beta": "advisor-tool-2026-03-01"}

Event = Mapping[str, Any]
Checks = list[tuple[str, str | None]]  # (rule, why it does not hold or None)


# --- the rules: each returns why it does not hold, or None ----------------------------------------


def order_problem(events: Sequence[Event]) -> str | None:
    """``event-order`` over a stream's events. A stream that an ``error`` event ends keeps the
    order (§5): ``answer_checks`` fails such a stream on its own."""
    kinds = [event.get("type") for event in events]
    if not kinds or kinds[0] != "message_start":
        return f"the stream starts with {kinds[0] if kinds else 'nothing'}, not message_start"
    ended = False  # a message_delta came: only pings, message_delta and the end may follow
    for position, kind in enumerate(kinds[1:], 1):
        if kind == "message_start":
            return f"a second message_start at event {position}"
        if kind in ("message_stop", "error") and position != len(kinds) - 1:
            return f"{kinds[position + 1]} after {kind}"
        if ended and kind not in ("ping", "message_delta", "message_stop", "error"):
            return f"{kind} after message_delta (event {position})"
        ended = ended or kind == "message_delta"
    if kinds[-1] not in ("message_stop", "error"):
        return f"the stream ends with {kinds[-1]}, not message_stop"
    return None if ended or kinds[-1] == "error" else "no message_delta before message_stop"


def index_problem(events: Sequence[Event]) -> str | None:
    """``indices``: blocks start at 0, 1, 2, ...; deltas and stops name an open block; none is open at the end."""
    started = 0
    open_blocks: set[int] = set()
    for position, event in enumerate(events):
        kind, index, where = event.get("type"), event.get("index"), f"(event {position})"
        if kind == "content_block_start":
            if index != started:
                return f"content_block_start at index {index!r}, where {started} was next {where}"
            open_blocks.add(started)
            started += 1
        elif kind in ("content_block_delta", "content_block_stop"):
            if not isinstance(index, int) or index not in open_blocks:
                return f"{kind} for block {index!r}, which is not open {where}"
            if kind == "content_block_stop":
                open_blocks.discard(index)
        elif kind in ("message_delta", "message_stop", "error") and open_blocks:
            return f"{kind} while block {min(open_blocks)} is still open {where}"
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
    """``advisor-result``: each result names an earlier call, its ``content`` is one known object; each call has one."""
    calls: list[Any] = []
    for position, block in enumerate(content):
        if block.get("type") == "server_tool_use":
            calls.append(block.get("id"))
        elif block.get("type") == "advisor_tool_result":
            call_id = block.get("tool_use_id")
            problem = None if call_id in calls else f"names {call_id!r}, which no server_tool_use before it has"
            problem = problem or _result_content_problem(block.get("content"))
            if problem:
                return f"advisor_tool_result (block {position}): {problem}"
    answered = {block.get("tool_use_id") for block in content if block.get("type") == "advisor_tool_result"}
    missing = [call_id for call_id in calls if call_id not in answered]
    return f"server_tool_use {missing[0]!r} has no advisor_tool_result" if missing else None


def whole_result_problem(events: Sequence[Event]) -> str | None:
    """An ``advisor_tool_result`` arrives complete at its start: no delta names it (§3)."""
    results = set()
    for event in events:
        if (event.get("content_block") or {}).get("type") == "advisor_tool_result":
            results.add(event.get("index"))
        elif event.get("type") == "content_block_delta" and event.get("index") in results:
            return f"a content_block_delta for the advisor_tool_result at index {event.get('index')}"
    return None


def _result_content_problem(result: Any) -> str | None:
    kind = result.get("type") if isinstance(result, dict) else None
    if kind not in _RESULT_FIELDS:
        what = f"type {kind!r}" if isinstance(result, dict) else type(result).__name__
        return f"content ({what}) is not one advisor_result, advisor_redacted_result or advisor_tool_result_error"
    name = _RESULT_FIELDS[kind]
    if kind == "advisor_tool_result_error" and result.get(name) not in ADVISOR_ERROR_CODES:
        return f"error_code {result.get(name)!r} is not one of the seven"
    return None if isinstance(result.get(name), str) else f"{kind} without a string {name}"


def _result_contents(content: Sequence[Event]) -> list[dict[str, Any]]:
    """The ``content`` object of each ``advisor_tool_result``."""
    results = [block.get("content") for block in content if block.get("type") == "advisor_tool_result"]
    return [result for result in results if isinstance(result, dict)]


def advice_problem(content: Sequence[Event]) -> str | None:
    """``advice``: no consult failed."""
    results = _result_contents(content)
    codes = [result.get("error_code") for result in results if result.get("type") == "advisor_tool_result_error"]
    return f"the advisor failed: advisor_tool_result_error {codes[0]!r}" if codes else None


def iterations_problem(message: Event) -> str | None:
    """``iterations``: one ``advisor_message`` (with its ``model``) per consult that ran (a
    ``max_uses_exceeded`` result runs none, §4), between executor ``message`` iterations."""
    iterations = (message.get("usage") or {}).get("iterations")
    results = _result_contents(message.get("content") or [])
    consults = sum(result.get("error_code") != "max_uses_exceeded" for result in results)
    if iterations is None and not consults:
        return None
    if not isinstance(iterations, list) or iterations != _iterations(message):
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
    """``usage-total``: each top-level token field is the sum over the ``message`` iterations, if any."""
    iterations = _iterations(message)
    for key in USAGE_TOKENS if iterations else ():
        executor = sum(token_count(item.get(key)) for item in iterations if item.get("type") == "message")
        advisor = sum(token_count(item.get(key)) for item in iterations if item.get("type") == "advisor_message")
        total = token_count(message["usage"].get(key))
        if total != executor:
            hint = ": it includes the advisor's tokens" if advisor and total == executor + advisor else ""
            return f"usage.{key} is {total}, the executor iterations sum to {executor}{hint}"
    return None


def _iterations(message: Event) -> list[dict[str, Any]]:
    """The objects in ``usage.iterations`` (none if it is not a list)."""
    iterations = (message.get("usage") or {}).get("iterations")
    return [item for item in iterations if isinstance(item, dict)] if isinstance(iterations, list) else []


# --- probing --------------------------------------------------------------------------------------


@dataclass
class Options:
    """What ``check`` sends, and where (``url``: the gateway's base URL, ``ANTHROPIC_BASE_URL``)."""

    url: str
    key: str | None = None
    model: str = DEFAULT_MODEL
    advisor: str = DEFAULT_ADVISOR
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 300.0


@dataclass
class Answer:
    """What one request got back, as a client saw it. ``problem``: why it is not a usable answer
    (the ``status`` rule). A stream's ``events`` come with their ``event:`` ``names`` and their
    ``arrivals`` (seconds from the request); ``unbuilt`` says why they build no ``message``."""

    status: int = 0
    problem: str | None = None
    raw: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    message: dict[str, Any] = field(default_factory=dict)
    unbuilt: str | None = None

    @property
    def usable(self) -> bool:
        """A Message came back, to check and to send back as history."""
        return self.problem is None and self.unbuilt is None


def probe(client: httpx.Client, url: httpx.URL, body: dict[str, Any]) -> Answer:
    """Send ``body``; read the answer (at most ``MAX_ANSWER_BYTES``) the way its ``stream`` flag asks."""
    answer = Answer()
    started = time.monotonic()
    raw = bytearray()
    with client.stream("POST", url, json=body) as response:
        answer.status = response.status_code
        kind = response.headers.get("content-type", "")
        decoder = SSEDecoder()
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) > MAX_ANSWER_BYTES:
                answer.problem = f"the answer is over {MAX_ANSWER_BYTES} bytes"
                return answer
            for name, data in decoder.feed(chunk) if kind.startswith(_SSE) else ():
                answer.events.append(_readable(parse_event(name, data)))
                answer.names.append(name)
                answer.arrivals.append(time.monotonic() - started)
    answer.raw = bytes(raw)
    answer.problem = _answer_problem(answer, kind, streamed=body["stream"])
    return answer


def _readable(event: dict[str, Any] | UpstreamError) -> dict[str, Any]:
    return {"type": "unreadable", "reason": event.detail} if isinstance(event, UpstreamError) else event


def _answer_problem(answer: Answer, kind: str, *, streamed: bool) -> str | None:
    """``status``: a 2xx with the right content type and a Message; sets ``answer.message``."""
    wanted = _SSE if streamed else "application/json"
    if not 200 <= answer.status < 300:
        return f"HTTP {answer.status}: {_error_text(answer.raw)}"
    if not kind.startswith(wanted):
        return f"HTTP {answer.status} with content-type {kind or 'none'!r}, not {wanted}"
    if streamed and not answer.events:
        return "the stream holds no events"
    if streamed:
        accumulator = MessageAccumulator()
        try:
            for event in answer.events:
                accumulator.feed(event)
            answer.message = accumulator.complete()
        except UpstreamError as exc:
            answer.unbuilt = exc.detail
        return None
    try:
        message = orjson.loads(answer.raw)
    except orjson.JSONDecodeError:
        return "the body is not JSON"
    if (
        not isinstance(message, dict)
        or message.get("type") != "message"
        or not isinstance(message.get("content"), list)
    ):
        return "the body is not a Message (type 'message' with a content list)"
    answer.message = message
    return None


def _error_text(raw: bytes) -> str:
    """An error body's ``type: message`` (§5), or its first bytes."""
    try:
        error = orjson.loads(raw).get("error") or {}
        return f"{error['type']}: {str(error['message'])[:300]}"
    except (ValueError, AttributeError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace") or "(empty body)"


def _event_problem(answer: Answer) -> str | None:
    """``event-order``: each event readable and named by its data's type, in order, with no error."""
    for position, (name, event) in enumerate(zip(answer.names, answer.events, strict=True)):
        if event["type"] == "unreadable":
            return f"event {position} ({name}): {event['reason']}"
        if name != event["type"]:
            return f"event {position} is named {name!r} but its data's type is {event['type']!r}"
        if name == "error":
            error = event.get("error") or {}
            return f"the stream ended with an error event: {error.get('type')}: {error.get('message')}"
    return order_problem(answer.events)


def answer_checks(answer: Answer, *, required: bool, status: str = "status") -> Checks:
    """Every rule on one answer: ``status`` (or ``history``), a stream's event rules, the Message's."""
    if answer.problem is not None:
        return [(status, answer.problem)]
    events, content = answer.events, answer.message.get("content") or []
    event_checks: Checks = [("event-order", _event_problem(answer)), ("indices", index_problem(events))]
    message_checks: Checks = [
        ("advisor-call", block_problem(content, required=required)),
        ("advisor-result", result_problem(content) or whole_result_problem(events)),
        ("advice", advice_problem(content)),
        ("iterations", iterations_problem(answer.message)),
        ("usage-total", usage_total_problem(answer.message)),
    ]
    if answer.unbuilt is not None:
        why = NotChecked("not checked: the events build no Message (see event-order and indices)")
        message_checks = [(rule, why) for rule, _ in message_checks]
    return [(status, None), *(event_checks if events else []), *message_checks]


def sdk_problem(streamed: Answer, answered: Answer, body: dict[str, Any]) -> str | None:
    """``sdk``: the SDK, given the bytes each answer came in, builds the streamed Message with its
    accumulator and parses the JSON one; both have the same shape (:func:`shape`)."""
    if streamed.problem is not None or answered.problem is not None:
        return "not compared: an answer failed (see status)"
    params = {key: value for key, value in body.items() if key != "stream"}
    shapes = []
    failures = ("the SDK's accumulator failed on the streamed", "the SDK failed on the JSON")
    for answer, failed in zip((streamed, answered), failures, strict=True):
        try:
            shapes.append(shape(_sdk_message(answer.raw, answer is streamed, params)))
        except ImportError:
            return NotChecked(f"not checked: the official SDK is not installed: {INSTALL_SDK}")
        except Exception as exc:  # whatever the SDK raises on these bytes is the finding
            return f"{failed} answer: {type(exc).__name__}: {str(exc)[:300]}"
    return None if shapes[0] == shapes[1] else f"streamed {shapes[0]} but JSON {shapes[1]}"


def _sdk_message(raw: bytes, streamed: bool, params: dict[str, Any]) -> Any:
    """The Message the SDK makes of ``raw``, replayed as its answer to ``params``."""
    import anthropic
    import httpx2

    response = httpx2.Response(200, content=raw, headers={"content-type": _SSE if streamed else "application/json"})
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: response))
    with anthropic.Anthropic(api_key="replay", base_url="http://replay", http_client=http, max_retries=0) as sdk:
        if not streamed:
            return sdk.beta.messages.create(**params).model_dump(mode="json", exclude_none=True)
        with sdk.beta.messages.stream(**params) as stream:
            return stream.get_final_message().model_dump(mode="json", exclude_none=True)


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
    iterations = ", ".join(str(item.get("type")) for item in _iterations(message))
    return f"[{', '.join(kinds)}] iterations [{iterations}]"


# --- the timeline, the report and the command -----------------------------------------------------


@dataclass
class Leg:
    """One sampling in the streamed consult (``executor`` or ``advisor``), in seconds from the
    request; ``first_byte``: when its first event arrived (None for an advisor: its result arrives whole)."""

    kind: str
    model: str | None
    start: float
    end: float
    first_byte: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def timeline(answer: Answer) -> list[Leg]:
    """A streamed answer's legs, from when its events arrived: the executor up to a ``server_tool_use``,
    the advisor up to its result, and so on to ``message_stop``; tokens and models from ``usage.iterations``."""
    model = answer.message.get("model")
    legs = [Leg("executor", model, 0.0, 0.0)]
    for at, event in zip(answer.arrivals, answer.events, strict=True):
        block_type = (event.get("content_block") or {}).get("type")
        if block_type == "server_tool_use":
            legs[-1].end = at
            legs.append(Leg("advisor", None, at, at))
        elif block_type == "advisor_tool_result":
            legs[-1].end = at
            legs.append(Leg("executor", model, at, at))
        elif legs[-1].kind == "executor" and legs[-1].first_byte is None and event["type"] != "content_block_stop":
            legs[-1].first_byte = at
    legs[-1].end = answer.arrivals[-1]
    for kind, name in (("executor", "message"), ("advisor", "advisor_message")):
        usages = [item for item in _iterations(answer.message) if item.get("type") == name]
        for leg, usage in zip([leg for leg in legs if leg.kind == kind], usages, strict=False):
            leg.input_tokens, leg.output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
            leg.model = usage.get("model", leg.model)
    return legs


def _leg_line(leg: Leg, total: float, width: int = 32) -> str:
    start = min(round(leg.start / total * width), width - 1)
    bar = (" " * start + "█" * max(1, round(leg.end / total * width) - start)).ljust(width)
    first = "  -   " if leg.first_byte is None else f"{leg.first_byte - leg.start:5.2f}s"
    tokens = "tokens ?" if leg.input_tokens is None else f"{leg.input_tokens} in, {leg.output_tokens} out"
    times = f"{leg.start:5.2f}s {leg.end - leg.start:5.2f}s {first}"
    return f"  {leg.kind:<8}  {leg.model or '?':<18} |{bar}| {times}  {tokens}"


class NotChecked(str):
    """Why a check could not run (it has not passed either)."""


@dataclass
class Report:
    """What ``check`` found: the streamed consult's legs, and one result per check: its ``probe``
    (``streamed``, ``json`` or ``turn 2``), ``rule`` (a key of :data:`RULES`), whether it ``passed``
    (None: not checked) and the ``detail`` (the rule, or why it does not hold or was not checked)."""

    url: str
    model: str
    advisor: str
    results: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[Leg] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check ran and passed: the exit status is 0 only then."""
        return bool(self.results) and all(result["passed"] for result in self.results)

    def add(self, probe: str, checks: Checks) -> None:
        for rule, problem in checks:
            passed = None if isinstance(problem, NotChecked) else problem is None
            self.results.append({"probe": probe, "rule": rule, "passed": passed, "detail": problem or RULES[rule]})

    def to_json(self) -> dict[str, Any]:
        found = asdict(self)
        found["checks"] = found.pop("results")
        return {**found, "ok": self.ok}

    def text(self) -> str:
        lines = [f"advisor-middleware check {self.url}", f"executor {self.model}, advisor {self.advisor}", ""]
        for result in self.results:
            verdict = {True: "pass", False: "FAIL", None: "skip"}[result["passed"]]
            lines.append(f"  {verdict}  {result['probe']:<8}  {result['rule']:<14}  {result['detail']}")
        counts = Counter(result["passed"] for result in self.results)
        lines += ["", f"{len(self.results)} checks: {counts[False]} failed, {counts[None]} not checked."]
        if self.timeline:
            total = max(leg.end for leg in self.timeline) or 1.0
            lines += [
                "",
                f"Timeline of the streamed consult: {total:.2f} s to message_stop, from when its events arrived",
                "here (a remote gateway's legs are not seen separately). first: the leg's first event, after",
                "its start; tokens and models: usage.iterations.",
                f"  {'leg':<8}  {'model':<18} |{'':<32}| {'start':>6} {'took':>6} {'first':>6}  tokens",
                *(_leg_line(leg, total) for leg in self.timeline),
            ]
        return "\n".join(lines)


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
    body: dict[str, Any] = {
        "model": options.model,
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": options.advisor}],
    }
    forced = {**body, "tool_choice": {"type": "tool", "name": "advisor"}}  # so a real model consults too (§1)
    timeout = httpx.Timeout(options.timeout, connect=min(options.timeout, 10.0))
    key = {"x-api-key": options.key} if options.key else {}
    with httpx.Client(timeout=timeout, headers={**_HEADERS, **key, **dict(options.headers)}) as client:
        streamed = probe(client, url, forced)
        answered = probe(client, url, {**forced, "stream": False})
        report.add("streamed", answer_checks(streamed, required=True))
        report.add("streamed", [("sdk", sdk_problem(streamed, answered, forced))])
        report.add("json", answer_checks(answered, required=True))
        first = streamed if streamed.usable else answered
        if not first.usable:
            report.add("turn 2", [("history", "not sent: neither first answer can be sent back")])
        else:
            reply = {"role": "assistant", "content": first.message["content"]}
            history = [*body["messages"], reply, {"role": "user", "content": FOLLOW_UP}]
            second = probe(client, url, {**body, "messages": history})
            report.add("turn 2", answer_checks(second, required=False, status="history"))
    report.timeline = timeline(streamed) if streamed.usable else []
    return report


def add_check_command(commands: Any) -> None:
    """Adds ``check`` to the CLI's subcommands (``commands``, from ``add_subparsers``)."""
    from .cli import SECONDS_ABOVE_ZERO, http_url

    check = commands.add_parser(
        "check",
        help="probe a deployed gateway's advisor support the way a client would",
        description=(
            "Send a forced consult to URL/v1/messages, streamed and as JSON, then a second turn with that answer "
            "as history; check each answer against the advisor protocol; print the checks and a timeline."
        ),
        epilog="exit status: 0 every check passed, 1 one failed or could not run, 2 the gateway did not answer",
    )
    check.add_argument("url", metavar="URL", type=http_url, help="the gateway's base URL (ANTHROPIC_BASE_URL)")
    check.add_argument("--key", help="API key, sent as x-api-key")
    check.add_argument("--model", default=DEFAULT_MODEL, help="executor model (default: %(default)s)")
    check.add_argument("--advisor", default=DEFAULT_ADVISOR, help="advisor model (default: %(default)s)")
    extra = "an extra request header (repeatable), e.g. 'authorization: Bearer sk-...'"
    check.add_argument("--header", action="append", default=[], type=_header, metavar="NAME:VALUE", help=extra)
    wait = "longest wait for bytes (default: 300)"
    check.add_argument("--timeout", type=SECONDS_ABOVE_ZERO, default=300.0, metavar="SECONDS", help=wait)
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME:VALUE")
    return name.strip(), content.strip()


def check_main(args: argparse.Namespace) -> int:
    """Runs ``check`` with parsed arguments: prints the report; 0 if every check passed, 1 if
    one did not, 2 if the gateway could not be reached (one line on stderr)."""
    options = Options(args.url, args.key, args.model, args.advisor, list(args.header), args.timeout)
    try:
        report = run_check(options)
    except httpx.HTTPError as exc:
        what = "cannot reach" if isinstance(exc, httpx.ConnectError) else "request failed at"
        reason = str(exc) or type(exc).__name__
        print(f"advisor-middleware check: {what} {messages_url(args.url)}: {reason}", file=sys.stderr, flush=True)
        return 2
    text = orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() if args.json else report.text()
    print(text, flush=True)
    return 0 if report.ok else 1
