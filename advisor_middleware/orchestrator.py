"""The advisor loop: executor legs and advisor consults merged into one client message.

``Orchestration.run(emit)`` is the single code path behind both response modes (streaming sends
each group of events as it comes, JSON accumulates them); docs/architecture.md follows one event.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from .accumulate import USAGE_TOKENS, MessageAccumulator, token_count, token_counts
from .blocks import ADVISOR_NAME, AdvisorTool, advisor_result_block, server_tool_use_block, server_tool_use_id
from .config import AdvisorConfig
from .errors import ClientGone, UpstreamError
from .history import HistoryInfo, advice_tool_result, advisor_tool_use, render_history
from .profiles import ConsultContext, ConsultPlan, plan_consult, request_headers, run_chain
from .prompts import ADVISOR_SYSTEM_PROMPT, EXECUTOR_TOOL_DESCRIPTION, budget_note
from .routers.base import LEG_HEADER, Batch, Leg, MessagesRouter, leg_headers, run_leg
from .sse import RawDelta, raw_delta_at, raw_delta_event
from .telemetry import LegTrace, RequestTrace
from .transcript import render_transcript, tool_uses

__all__ = ["Orchestration", "advisor_error_code", "executor_body"]

log = logging.getLogger("advisor_middleware")

Emit = Callable[[Sequence[dict[str, Any] | RawDelta]], Awaitable[None]]
"""Takes one group of the client's events (the streaming writer sends a group in one ``send``):
dicts, and the executor's text deltas as :data:`RawDelta`, re-indexed."""

_TOO_LONG = ("prompt is too long", "context length", "context window", "too many tokens")
_CACHE_TTLS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def advisor_error_code(exc: BaseException) -> str:
    """Map a failed advisor leg to one of the ``advisor_tool_result_error`` codes (docs/protocol.md §2)."""
    if isinstance(exc, TimeoutError):
        return "execution_time_exceeded"
    if not isinstance(exc, UpstreamError):
        return "unavailable"
    kind = exc.kind
    message = str(exc.error.get("message") or "").lower()
    if exc.status == 429 or kind == "rate_limit_error":
        return "too_many_requests"
    if exc.status == 529 or kind == "overloaded_error":
        return "overloaded"
    if exc.status in (408, 504) or kind == "timeout_error":
        return "execution_time_exceeded"
    if exc.status == 413 or kind == "request_too_large" or any(s in message for s in _TOO_LONG):
        return "prompt_too_long"
    if exc.status == 404 or kind == "not_found_error" or ("model" in message and "not found" in message):
        return "model_not_found"
    return "unavailable"


BlockMode = Literal["text", "live", "advisor", "held"]
"""How the relay treats one block of an executor leg."""

TEXT: BlockMode = "text"  # text or thinking, relayed live; its deltas go on as the bytes they came in
LIVE: BlockMode = "live"  # any other block of the executor's own, relayed live as events
ADVISOR: BlockMode = "advisor"  # the executor's advisor call, relayed as a server_tool_use without input
HELD: BlockMode = "held"  # a client tool, or any block after an advisor call: sent after the consults


@dataclass(slots=True)
class RelayedBlock:
    """A block of the leg in flight, from its ``content_block_start`` to its stop."""

    mode: BlockMode
    index: int
    """The client's index of the block; for a held block, its place in the relay's ``held``."""


@dataclass(slots=True)
class ClientMessage:
    """The one message the client receives across the request's legs (each leg's own block
    indices are mapped onto its ``next_index``)."""

    started: bool = False
    next_index: int = 0

    def new_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    def start(self, message: dict[str, Any]) -> dict[str, Any]:
        # No content: the legs bring it.
        self.started = True
        return {"type": "message_start", "message": {**message, "content": []}}


@dataclass(slots=True)
class ToolUseIds:
    """The ``tool_use`` ids the conversation has taken, walked at the first advisor call only:
    most requests that offer the advisor never call it."""

    _messages: list[Any]
    _taken: set[str] | None = None

    def claim(self, proposed: Any) -> str:
        """The executor's own id when usable; a fresh one if it is missing or reused (some
        OpenAI-compatible servers number calls per response), so ``srvtoolu_`` ids stay unique."""
        if self._taken is None:
            self._taken = {str(block.get("id")) for _, block in tool_uses(self._messages)}
        if isinstance(proposed, str) and proposed and proposed not in self._taken:
            self._taken.add(proposed)
            return proposed
        fresh = f"toolu_adv{uuid.uuid4().hex[:20]}"
        self._taken.add(fresh)
        return fresh


@dataclass(slots=True)
class ExecutorLegRelay:
    """One executor leg, relayed onto the client's message as its events arrive (each block as
    its :data:`BlockMode` says). Held blocks wait until the leg's consults are done: the advisor
    pair comes first (docs/protocol.md §3). The accumulator keeps the whole leg, for the next
    leg's conversation."""

    message: ClientMessage
    ids: ToolUseIds
    emit: Emit
    accumulator: MessageAccumulator = field(default_factory=MessageAccumulator)
    blocks: dict[int, RelayedBlock] = field(default_factory=dict)  # the open blocks, by their index in the leg
    held: list[list[dict[str, Any]]] = field(default_factory=list)  # each held block's events, in start order
    calls: dict[int, str] = field(default_factory=dict)  # the advisor calls: block index in the leg -> executor id

    async def on_batch(self, batch: Batch) -> None:
        """Relay one group of the leg's events to ``emit`` as one group; a malformed stream
        raises :class:`UpstreamError`."""
        group: Batch = []
        try:
            self.relay(batch, group)
        finally:
            if group:  # on a malformed event too: what came before it opened blocks to close
                await self.emit(group)

    def relay(self, batch: Batch, out: Batch) -> None:
        """Map ``batch`` onto the client's events, appended to ``out``."""
        blocks = self.blocks
        kept = self.accumulator.pending
        for event in batch:
            if type(event) is RawDelta:
                # A delta as its bytes, nearly every event: those of a text or thinking block go
                # on as they are, kept unparsed for a consult that may follow.
                block = blocks.get(event.index)
                if block is not None and block.mode == TEXT:
                    kept.append(event)
                    out.append(event if block.index == event.index else raw_delta_at(event, block.index))
                    continue
                event = raw_delta_event(event)  # a block held, an advisor call or no block
            self._relay_event(event, out)

    def _relay_event(self, event: dict[str, Any], out: Batch) -> None:
        kind = event.get("type")
        try:
            self.accumulator.feed(event)
            upstream_index = event.get("index", -1)
            block = self.blocks.get(upstream_index)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError):
            raise _malformed(kind) from None
        if kind == "content_block_delta" or kind == "content_block_stop":
            if block is not None:  # else a block never started, or already stopped: not relayed
                self._continue_block(event, upstream_index, block, out)
        elif kind == "content_block_start":
            self._start_block(event, upstream_index, block, out)
        elif kind == "message_start" and not self.message.started:
            out.append(self.message.start(dict(event.get("message") or {})))

    def _continue_block(self, event: dict[str, Any], upstream_index: int, block: RelayedBlock, out: Batch) -> None:
        stop = event.get("type") == "content_block_stop"
        if stop:
            del self.blocks[upstream_index]
        if block.mode == HELD:
            self.held[block.index].append(event)
        elif block.mode != ADVISOR:
            # Copied only to re-index: a block keeps its index until a consult comes first.
            out.append(event if block.index == upstream_index else {**event, "index": block.index})
        elif stop:  # the call's input is ours to give: none
            out.append({"type": "content_block_stop", "index": block.index})

    def _start_block(self, event: dict[str, Any], upstream_index: int, block: RelayedBlock | None, out: Batch) -> None:
        content = event.get("content_block") or {}
        if not isinstance(content, dict):
            raise _malformed("content_block_start")
        if not self.message.started or block is not None:
            # Relayed, this would break the client's stream (docs/protocol.md §3).
            problem = "before message_start" if not self.message.started else "twice"
            raise UpstreamError(502, f"the executor's stream started block {upstream_index} {problem}")
        kind = content.get("type")
        if kind == "tool_use" and content.get("name") == ADVISOR_NAME:
            out += self._advisor_call(upstream_index, content.get("id"))
        elif kind == "tool_use" or self.calls:
            self.blocks[upstream_index] = RelayedBlock(HELD, len(self.held))
            self.held.append([event])
        else:
            index = self.message.new_index()
            mode = TEXT if kind in ("text", "thinking") else LIVE
            self.blocks[upstream_index] = RelayedBlock(mode, index)
            out.append({**event, "index": index})

    def _advisor_call(self, upstream_index: int, proposed_id: Any) -> list[dict[str, Any]]:
        exec_id = self.calls[upstream_index] = self.ids.claim(proposed_id)
        index = self.message.new_index()
        self.blocks[upstream_index] = RelayedBlock(ADVISOR, index)
        block = server_tool_use_block(server_tool_use_id(exec_id))
        # Real advisor streams carry one empty input_json_delta (docs/protocol.md §3).
        delta = {"type": "input_json_delta", "partial_json": ""}
        return [
            {"type": "content_block_start", "index": index, "content_block": block},
            {"type": "content_block_delta", "index": index, "delta": delta},
        ]

    def close(self) -> list[dict[str, Any]]:
        """Stop events for the blocks the client has open; the leg is over for the relay."""
        indexes = sorted(block.index for block in self.blocks.values() if block.mode != HELD)
        self.blocks = {}
        return [{"type": "content_block_stop", "index": index} for index in indexes]

    def release_held(self) -> list[dict[str, Any]]:
        """The held blocks' events, at the client's next indices, each block stopped."""
        events: list[dict[str, Any]] = []
        for block_events in self.held:
            index = self.message.new_index()
            events += ({**event, "index": index} for event in block_events)
            if block_events[-1].get("type") != "content_block_stop":
                events.append({"type": "content_block_stop", "index": index})
        return events

    def held_client_tools(self) -> bool:
        """Whether the executor called a client tool: the client's turn, not another leg."""
        return any((events[0].get("content_block") or {}).get("type") == "tool_use" for events in self.held)

    def content(self) -> list[dict[str, Any]]:
        """The leg's blocks, verbatim (thinking keeps its signature), with the advisor calls in
        the canonical form later turns render from history (docs/protocol.md §6)."""
        out = []
        for index, block in enumerate(self.accumulator.content):
            if block:
                exec_id = self.calls.get(index)
                out.append(advisor_tool_use(exec_id) if exec_id else block)
        return out


class Orchestration:
    """One request's advisor loop. Build one per request; ``run`` it once."""

    def __init__(
        self,
        *,
        router: MessagesRouter,
        config: AdvisorConfig,
        body: dict[str, Any],
        tool_index: int,
        tool: AdvisorTool,
        headers: list[tuple[bytes, bytes]],
        scope: Any,
        streaming: bool,
        history: tuple[list[Any], HistoryInfo] | None = None,
    ) -> None:
        self.router = router
        self.config = config
        self.body = body
        self.tool = tool
        self.scope = scope
        self.streaming = streaming
        self._history = history  # render_history of body's messages, when classify already ran it
        self.headers = headers
        self.trace = RequestTrace(
            model=body.get("model"),
            enabled=config.opentelemetry,
            capture_content=config.capture_content,
        )
        """The request's logs, spans and metrics (docs/observability.md)."""
        self.exec_headers = leg_headers(headers, "executor")
        # The same headers but the role marker, which leg_headers puts last.
        self.advisor_headers = [*self.exec_headers[:-1], (LEG_HEADER, b"advisor")]
        self.executor_body = executor_body(body, tool_index, tool)
        self.message = ClientMessage()
        self.leg: ExecutorLegRelay | None = None  # the leg in flight, whose open blocks a failure closes
        self.consults = 0
        self.iterations: list[dict[str, Any]] = []
        self.leg_usages: list[dict[str, Any]] = []
        self.first_leg_headers: list[tuple[bytes, bytes]] = []
        """The first executor leg's answer headers, filled by its router before its first events."""

    async def run(self, emit: Emit) -> None:
        """Run the loop, handing the client's events to ``emit`` in groups that are ready
        together, in the caller's task. Before anything was emitted (and always in JSON mode) a
        failure raises, so the caller can answer with the upstream's own status; once streaming
        has started it ends the stream: open blocks closed, then one ``error`` event.
        :class:`ClientGone` propagates unchanged."""
        try:
            with self.trace.request(self.headers):
                await self._loop(emit)
        except Exception as exc:
            if isinstance(exc, ClientGone) or not self.streaming or not self.message.started:
                raise
            closing = self.leg.close() if self.leg is not None else []
            await emit([*closing, {"type": "error", "error": _stream_error(exc)}])

    async def _loop(self, emit: Emit) -> None:
        """Executor leg, consult the advisor for each call it made, feed the advice back as the
        calls' results, repeat; until a leg calls no advisor, or calls a client tool."""
        messages, info = self._history or render_history(self.body.get("messages") or [])
        ids = ToolUseIds(messages)
        if info.pending:
            messages = await self._resume(messages, info.pending, emit)
        for legs in range(1, self.config.max_executor_legs + 1):
            leg = await self._executor_leg(messages, ids, emit, first=legs == 1)
            ended = leg.accumulator.message
            leg_usage = ended.get("usage") or {}
            self.leg_usages.append(leg_usage)
            self.iterations.append(_iteration({"type": "message"}, leg_usage))
            tail = leg.close()
            if not leg.calls:
                tail += leg.release_held()
                break
            messages = _append_assistant(messages, leg.content())
            if tail:  # sent before the consults, which take a while
                await emit(tail)
            calls = [(exec_id, server_tool_use_id(exec_id)) for exec_id in leg.calls.values()]
            results = await self._consult_calls(messages, calls, emit)
            tail = leg.release_held()
            if leg.held_client_tools():
                break  # the client's turn: its tools run before the executor goes on
            if tail:
                await emit(tail)
                tail = []
            messages = _answer(messages, results)
        else:
            log.warning("executor kept calling the advisor; stopping after %d legs", legs)
            ended = {"stop_reason": "end_turn", "stop_sequence": ended.get("stop_sequence")}
        delta = {"stop_reason": ended.get("stop_reason"), "stop_sequence": ended.get("stop_sequence")}
        # Top-level usage sums the executor legs only; advisor tokens bill at the advisor's
        # rates and live only in iterations (docs/protocol.md §4).
        usage = {**_sum_usage(self.leg_usages), "iterations": self.iterations}
        await emit([*tail, {"type": "message_delta", "delta": delta, "usage": usage}, {"type": "message_stop"}])

    async def _resume(self, messages: list[Any], pending: list[tuple[str, str]], emit: Emit) -> list[Any]:
        """A resumed ``pause_turn``: the response begins with the pending consults' results
        (docs/protocol.md §6), under a ``message_start`` of ours: no executor leg has started."""
        start: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        await emit([self.message.start(start)])
        # The advisor reads up to the call, as in the loop: the client's tool results come
        # after the advice, so the next consult's transcript extends this one.
        last = messages[-1] if messages else None
        upto = messages[:-1] if isinstance(last, dict) and last.get("role") == "user" else messages
        return _answer(messages, await self._consult_calls(upto, pending, emit))

    async def _executor_leg(self, messages: list[Any], ids: ToolUseIds, emit: Emit, *, first: bool) -> ExecutorLegRelay:
        body = dict(self.executor_body)
        body["messages"] = messages
        if self.consults and _forces_advisor(body.get("tool_choice")):
            # A forced consult is honoured once; forcing it again would loop forever.
            body["tool_choice"] = {**body["tool_choice"], "type": "auto"}
            body["tool_choice"].pop("name", None)
        relay = self.leg = ExecutorLegRelay(self.message, ids, emit)
        with self.trace.leg("executor", body, relay.accumulator, self.exec_headers) as traced:
            leg = Leg(
                "executor",
                body,
                traced.headers,
                self.scope,
                raw_deltas=True,
                # Where the client's response start finds them.
                response_headers=self.first_leg_headers if first else [],
                max_bytes=self.config.max_leg_bytes,
            )
            await run_leg(self.router, leg, traced.watch(relay.on_batch))
            if not relay.accumulator.finished:
                raise UpstreamError(502, "the executor's stream ended before its message_delta")
            if not self.message.started:
                raise UpstreamError(502, "the executor's stream had no message_start")
        return relay

    async def _consult_calls(
        self, messages: list[Any], calls: list[tuple[str, str]], emit: Emit
    ) -> list[dict[str, Any]]:
        """Consult the advisor on ``messages`` for each call (executor id, ``srvtoolu_`` id), in
        order; emit each ``advisor_tool_result`` whole, in one start event (docs/protocol.md
        §3), as it is ready. Returns the executor's ``tool_result`` blocks."""
        results: list[dict[str, Any]] = []
        for exec_id, srv_id in calls:
            with self.trace.consult(srv_id) as consult:
                fields = await self._consult(messages)
                consult.error_code = fields.get("error_code")
            block = advisor_result_block(srv_id, **fields)
            index = self.message.new_index()
            results.append(advice_tool_result(exec_id, block["content"]))
            await emit(
                [
                    {"type": "content_block_start", "index": index, "content_block": block},
                    {"type": "content_block_stop", "index": index},
                ]
            )
        return results

    async def _consult(self, messages: list[Any]) -> dict[str, Any]:
        """The fields of one consult's ``advisor_tool_result`` content."""
        self.consults += 1
        if any(cap is not None and self.consults > cap for cap in (self.tool.max_uses, self.config.max_consults)):
            return {"error_code": "max_uses_exceeded"}
        plan = await plan_consult(self.config, self.tool, self._consult_context)
        if isinstance(plan, str):
            return {"error_code": plan}
        body = self._advisor_body(messages, plan)

        async def attempt(model: str, deadline: float) -> dict[str, Any]:
            return await self._attempt({**body, "model": model}, plan.max_tokens, deadline)

        return await run_chain(plan, attempt, self.trace.fallback)

    def _consult_context(self) -> ConsultContext:
        return ConsultContext(
            headers=request_headers(self.headers),
            executor_model=str(self.body.get("model")),
            advisor_model=self.tool.model,
            consult=self.consults,
            iterations=tuple(dict(entry) for entry in self.iterations),  # copies: what the policy edits is not billed
        )

    async def _attempt(self, body: dict[str, Any], max_tokens: int, deadline: float) -> dict[str, Any]:
        """One advisor leg of a consult, on ``body["model"]``: the result's fields."""
        acc = MessageAccumulator()
        try:
            with self.trace.leg("advisor", body, acc, self.advisor_headers) as traced:
                await self._advisor_leg(body, acc, deadline, traced)
        except ClientGone:
            raise  # not the advisor's failure: the request is over
        except Exception as exc:
            return {"error_code": _advisor_failure(exc)}
        finally:
            self._record_advisor(acc, body["model"])
        return self._advice(acc, max_tokens)

    def _advisor_body(self, messages: list[Any], plan: ConsultPlan) -> dict[str, Any]:
        """The advisor leg's request to the plan's first model (each attempt sets its own)."""
        system = self.config.advisor_system_prompt or ADVISOR_SYSTEM_PROMPT
        if plan.instructions:
            system += "\n\n" + plan.instructions
        if self.tool.max_tokens:
            system += budget_note(plan.max_tokens)
        transcript = render_transcript(
            self.body,
            messages,
            max_block_chars=self.config.max_transcript_block_chars,
            max_chars=self.config.max_transcript_chars,
        )
        content: list[dict[str, Any]] = [{"type": "text", "text": block} for block in transcript.blocks]
        # The profile's choice first, then the operator's, then the tool's ("off" beats both).
        ttl = plan.caching or self.config.advisor_caching or _caching_ttl(self.tool.caching)
        if ttl != "off" and ttl is not None and transcript.settled:
            # The head (a hit even after the budget cut moves) and the newest boundary, which
            # the next consult reads (docs/protocol.md §4).
            for index in {0, transcript.settled - 1}:
                content[index]["cache_control"] = {"type": "ephemeral", "ttl": ttl}
        body: dict[str, Any] = {
            "model": plan.models[0],
            "max_tokens": plan.max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": content}],
            "stream": True,
        }
        metadata = self.body.get("metadata")
        if isinstance(metadata, dict):
            body["metadata"] = metadata
        return {**body, **plan.params}

    async def _advisor_leg(
        self, body: dict[str, Any], acc: MessageAccumulator, deadline: float, traced: LegTrace
    ) -> None:
        leg = Leg("advisor", body, traced.headers, self.scope, max_bytes=self.config.max_leg_bytes)

        async def feed(batch: Batch) -> None:
            acc.feed_all(batch)

        # The consult's one deadline, whichever attempt this is (a profile's timeout).
        with anyio.CancelScope(deadline=deadline) as scope:
            await run_leg(self.router, leg, traced.watch(feed))
        if scope.cancelled_caught:
            raise TimeoutError("the consult's time budget ran out")

    def _advice(self, acc: MessageAccumulator, max_tokens: int) -> dict[str, Any]:
        """The fields of a finished advisor leg's result: its text, or an error code."""
        if not acc.finished:
            log.warning("advisor stream ended before its message_delta")
            return {"error_code": "unavailable"}
        text = "".join(str(b.get("text", "")) for b in acc.content if b.get("type") == "text")
        stop = acc.message.get("stop_reason")
        if stop == "max_tokens":
            text += f"\n\n[Advisor output truncated at max_tokens={max_tokens}.]"
        if not text.strip() and stop != "refusal":
            return {"error_code": "unavailable"}
        # stop_reason appears on results when the tool sets max_tokens (docs/protocol.md §2);
        # a refusal is passed on too, since it is what makes Claude Code show "Advisor declined".
        show_stop = self.tool.max_tokens is not None or stop == "refusal"
        return {"text": text, "stop_reason": stop if show_stop else None}

    def _record_advisor(self, acc: MessageAccumulator, model: str) -> None:
        usage = acc.message.get("usage")
        if not acc.message or not isinstance(usage, dict):
            return  # no sub-inference ran (or none we can bill)
        if self.config.report_advisor_model == "requested":
            model = self.tool.model
        self.iterations.append(_iteration({"type": "advisor_message", "model": model}, usage))


def executor_body(body: dict[str, Any], tool_index: int, tool: AdvisorTool) -> dict[str, Any]:
    """What every executor leg sends but its messages. The advisor entry is swapped in place
    for a plain function tool: the other tools keep their positions (and the host's prompt-cache
    prefix). Advisor-only fields such as defer_loading go with it; a cache breakpoint stays."""
    tools = list(body["tools"])
    function_tool: dict[str, Any] = {
        "name": ADVISOR_NAME,
        "description": EXECUTOR_TOOL_DESCRIPTION,
        "input_schema": {"type": "object", "properties": {}},
    }
    if tool.cache_control is not None:
        function_tool["cache_control"] = tool.cache_control
    tools[tool_index] = function_tool
    return {**body, "tools": tools, "stream": True}


def _stream_error(exc: Exception) -> dict[str, Any]:
    # The error event's error for a failure after the stream started; logged here.
    if isinstance(exc, UpstreamError):
        log.warning("executor leg failed after the response started: %s", exc)
        _log_upstream_message(exc)
        return exc.error or {"type": "api_error", "message": str(exc)}
    log.exception("advisor loop failed after the response started")
    return {"type": "api_error", "message": "internal error in the advisor middleware"}


def _advisor_failure(exc: Exception) -> str:
    code = advisor_error_code(exc)
    if isinstance(exc, UpstreamError | TimeoutError):
        log.warning("advisor leg failed (%s): %s", code, exc)
        _log_upstream_message(exc)
    else:
        log.exception("advisor leg failed (%s)", code)
    return code


def _iteration(entry: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    entry.update(token_counts(usage))
    by_ttl = usage.get("cache_creation")
    if isinstance(by_ttl, dict):
        entry["cache_creation"] = {key: token_count(by_ttl.get(key)) for key in _CACHE_TTLS}
    return entry


def _caching_ttl(caching: dict[str, Any] | None) -> str | None:
    """The TTL of the tool's ``caching`` switch: ``None`` when off (docs/protocol.md §1)."""
    if caching is None:
        return None
    return "1h" if caching.get("ttl") == "1h" else "5m"


def _sum_usage(legs: list[dict[str, Any]]) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    for leg in legs:
        for key, value in leg.items():
            if key == "iterations":
                continue
            if key in USAGE_TOKENS:
                usage[key] = usage.get(key, 0) + token_count(value)
            elif isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
                _add_counts(usage.setdefault(key, {}), value)
            else:
                usage[key] = value
    for key in USAGE_TOKENS:
        usage.setdefault(key, 0)
    return usage


def _add_counts(bucket: Any, counts: dict[str, int]) -> None:
    if isinstance(bucket, dict):  # else an earlier leg gave the field another shape: it stays
        for key, value in counts.items():
            bucket[key] = bucket.get(key, 0) + value


def _log_upstream_message(exc: Exception) -> None:
    # The upstream's own message may quote the request or the model's output: DEBUG only
    # (every level above holds sizes, positions and types; UpstreamError.detail).
    if isinstance(exc, UpstreamError):
        log.debug("the upstream's error message: %r", exc.error.get("message"))


_EVENT_TYPES = ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta")


def _malformed(kind: Any) -> UpstreamError:
    # A field of the wrong type (an index that is not a number, a block that is not an object):
    # the leg's answer is broken, not the middleware. The type is named only if it is one of
    # Anthropic's: any other string is the host's, and this message is logged.
    name = kind if isinstance(kind, str) and kind in _EVENT_TYPES else "unrecognised"
    return UpstreamError(502, f"the executor's stream sent a malformed {name} event")


def _forces_advisor(choice: Any) -> bool:
    return isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") == ADVISOR_NAME


def _append_assistant(messages: list[Any], content: list[dict[str, Any]]) -> list[Any]:
    # A prefilled assistant turn is continued, not repeated: merge into it.
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        last = messages[-1]
        prior = last.get("content")
        prior_blocks = prior if isinstance(prior, list) else [{"type": "text", "text": str(prior)}] if prior else []
        return [*messages[:-1], {**last, "content": [*prior_blocks, *content]}]
    return [*messages, {"role": "assistant", "content": content}]


def _answer(messages: list[Any], results: list[dict[str, Any]]) -> list[Any]:
    # The advice answers the executor's calls in the next user turn. When that turn already holds
    # the client's tool results (a resumed mixed turn), the advice goes first, in call order.
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "user" and isinstance(last.get("content"), list):
        return [*messages[:-1], {**last, "content": [*results, *last["content"]]}]
    return [*messages, {"role": "user", "content": results}]
