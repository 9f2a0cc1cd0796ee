"""The advisor loop: executor legs and advisor consults merged into one client message.

``Orchestration.run(emit)`` is the single code path behind both response modes: the streaming
writer's ``emit`` sends each group of events as it comes, the JSON writer's accumulates them into
one Message (design §2.4).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .accumulate import MessageAccumulator
from .blocks import ADVISOR_NAME, AdvisorTool, advisor_result_block, server_tool_use_block, server_tool_use_id
from .config import AdvisorConfig
from .errors import ClientGone, UpstreamError
from .history import HistoryInfo, advice_tool_result, advisor_tool_use, render_history
from .legs import LegEncoder
from .prompts import ADVISOR_SYSTEM_PROMPT, EXECUTOR_TOOL_DESCRIPTION, budget_note
from .routers.base import LEG_HEADER, NOTHING, Batch, Leg, MessagesRouter, leg_headers, run_leg
from .sse import RawDelta, raw_delta_at, raw_delta_event
from .transcript import render_transcript

__all__ = ["Orchestration", "advisor_error_code"]

log = logging.getLogger("advisor_middleware")

Emit = Callable[[Sequence[dict[str, Any] | RawDelta]], Awaitable[None]]
"""Takes one group of the client's events (the streaming writer sends a group in one ``send``):
dicts, and the executor's text deltas as :data:`RawDelta`, re-indexed."""

_USAGE_SUMS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def advisor_error_code(exc: BaseException) -> str:
    """Map a failed advisor leg to one of the ``advisor_tool_result_error`` codes (§2.2)."""
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
    if exc.status == 413 or kind == "request_too_large" or _says_too_long(message):
        return "prompt_too_long"
    if exc.status == 404 or kind == "not_found_error" or ("model" in message and "not found" in message):
        return "model_not_found"
    return "unavailable"


def _says_too_long(message: str) -> bool:
    return any(s in message for s in ("prompt is too long", "context length", "context window", "too many tokens"))


@dataclass
class _Call:
    upstream_index: int
    exec_id: str
    srv_id: str


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
        self._history = history  # render_history of body's messages, when classify already ran it
        self.config = config
        self.body = body
        self.tool = tool
        self.scope = scope
        self.streaming = streaming
        self.exec_headers = leg_headers(headers, "executor")
        # The same headers but the role marker, which leg_headers puts last.
        self.advisor_headers = [*self.exec_headers[:-1], (LEG_HEADER, b"advisor")]
        self.base = self._executor_base(body, tool_index, tool)
        self.consults = 0
        self.iterations: list[dict[str, Any]] = []
        self.leg_usages: list[dict[str, Any]] = []
        self._next_index = 0
        # Upstream block index -> ("text" | "live" | "advisor" | "held", client index) for the
        # leg in flight; an entry lives from its content_block_start to its content_block_stop.
        # "text": a text or thinking block relayed live, whose RawDelta deltas go out as bytes.
        self._blocks: dict[int, tuple[str, int]] = {}
        self._ids: set[str] | None = None  # tool_use ids taken; collected at the first advisor call
        self._history_messages: list[Any] = []
        self._started = False
        # The executor leg in flight: what _on_batch feeds.
        self._acc = MessageAccumulator()
        self._held: list[list[dict[str, Any]]] = []
        self._calls: list[_Call] = []
        self._emit: Emit | None = None
        self.first_leg_headers: list[tuple[bytes, bytes]] = []
        """The headers of the first executor leg's answer, as its router gave them; filled
        before that leg's first events are emitted."""

    @staticmethod
    def _executor_base(body: dict[str, Any], tool_index: int, tool: AdvisorTool) -> dict[str, Any]:
        # Swap the advisor entry in place for a plain function tool: the other tools keep their
        # positions (and the host's prompt-cache prefix). Advisor-only fields such as
        # defer_loading go with it; a cache breakpoint on the entry stays.
        tools = list(body["tools"])
        function_tool: dict[str, Any] = {
            "name": ADVISOR_NAME,
            "description": EXECUTOR_TOOL_DESCRIPTION,
            "input_schema": {"type": "object", "properties": {}},
        }
        if tool.cache_control is not None:
            function_tool["cache_control"] = tool.cache_control
        tools[tool_index] = function_tool
        base = dict(body)
        base["tools"] = tools
        base["stream"] = True
        return base

    def _index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _exec_id(self, proposed: Any) -> str:
        # The executor's own id when usable; a fresh one if it is missing or reused (some
        # OpenAI-compatible servers number calls per response), so srvtoolu_ ids stay unique.
        if self._ids is None:
            # Only now: most requests that offer the advisor never call it (a walk of the whole
            # history, ~0.2 ms per MB, issue 7).
            self._ids = _tool_use_ids(self._history_messages)
        if isinstance(proposed, str) and proposed and proposed not in self._ids:
            self._ids.add(proposed)
            return proposed
        fresh = f"toolu_adv{uuid.uuid4().hex[:20]}"
        self._ids.add(fresh)
        return fresh

    async def run(self, emit: Emit) -> None:
        """Run the loop, handing the client's events to ``emit`` in groups that are ready
        together (what one ``send`` of the host or one network read carried), as soon as they
        are. The loop, the host of an ``AppRouter`` leg and ``emit`` all run in the caller's
        task. Before anything was
        emitted (and always in JSON mode) a failure raises, so the caller can answer with the
        upstream's own status; once streaming has started it ends the stream instead: open
        blocks closed, then one ``error`` event. :class:`ClientGone` (which ``emit`` raises
        once the client is gone, as a leg does) propagates unchanged."""
        self._emit = emit
        try:
            await self._loop()
        except Exception as exc:
            if isinstance(exc, ClientGone) or not self.streaming or not self._started:
                raise
            if isinstance(exc, UpstreamError):
                log.warning("executor leg failed after the response started: %s", exc)
                _log_upstream_message(exc)
                error = exc.error or {"type": "api_error", "message": str(exc)}
            else:
                log.exception("advisor loop failed after the response started")
                error = {"type": "api_error", "message": "internal error in the advisor middleware"}
            closing_events: list[dict[str, Any]] = [
                {"type": "content_block_stop", "index": index} for index in self._open_blocks()
            ]
            self._blocks = {}
            await emit([*closing_events, {"type": "error", "error": error}])

    async def _loop(self) -> None:
        out = self._emit
        assert out is not None
        messages, info = self._history or render_history(self.body.get("messages") or [])
        self._history_messages = messages
        if info.pending:
            # A resumed pause_turn: the pending consults run first and the response begins with
            # their results (advisor-wire-spec §2.3). No executor leg has started yet, so the
            # message_start is ours; the legs' usage arrives in message_delta as usual.
            self._started = True
            await out(
                [
                    {
                        "type": "message_start",
                        "message": {
                            "id": f"msg_{uuid.uuid4().hex[:24]}",
                            "type": "message",
                            "role": "assistant",
                            "model": self.body.get("model"),
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": 0, "output_tokens": 0},
                        },
                    }
                ]
            )
            # The advisor reads up to the call, as in the loop: the client's tool results come
            # after the advice, so the next consult's transcript extends this one (design §5).
            last = messages[-1] if messages else None
            upto = messages[:-1] if isinstance(last, dict) and last.get("role") == "user" else messages
            results: list[dict[str, Any]] = []
            for exec_id, srv_id in info.pending:
                await out(await self._consult_events(upto, srv_id, exec_id, results))
            messages = _answer(messages, results)
        stop_reason: Any = None
        stop_sequence: Any = None
        legs = 0
        encode = LegEncoder().encode  # each leg encodes only the messages the last did not have
        while True:
            legs += 1
            leg_body = dict(self.base)
            leg_body["messages"] = messages
            if self.consults and _forces_advisor(leg_body.get("tool_choice")):
                # A forced consult is honoured once; forcing it again would loop forever.
                leg_body["tool_choice"] = {**leg_body["tool_choice"], "type": "auto"}
                leg_body["tool_choice"].pop("name", None)
            acc = self._acc = MessageAccumulator()
            self._blocks = {}
            held: list[list[dict[str, Any]]] = []
            calls: list[_Call] = []
            self._held, self._calls = held, calls
            # The first leg's answer headers are kept where the client's response start finds them.
            answer_headers = self.first_leg_headers if legs == 1 else []
            leg = Leg(
                "executor",
                leg_body,
                self.exec_headers,
                self.scope,
                raw_deltas=True,
                encoder=encode,
                response_headers=answer_headers,
                max_bytes=self.config.max_leg_bytes,
            )
            await run_leg(self.router, leg, self._on_batch)
            if not acc.finished:
                raise UpstreamError(502, "the executor's stream ended before its message_delta")
            if not self._started:
                raise UpstreamError(502, "the executor's stream had no message_start")
            # Blocks the leg never stopped.
            tail: list[dict[str, Any]] = [{"type": "content_block_stop", "index": i} for i in self._open_blocks()]
            self._blocks = {}
            self._record_leg(acc.message.get("usage") or {})
            stop_reason = acc.message.get("stop_reason")
            stop_sequence = acc.message.get("stop_sequence")
            if calls:
                content = self._leg_content(acc.content, calls)
                messages = _append_assistant(messages, content)
                results = []
                for call in calls:
                    if tail:  # sent before the consult, which takes a while
                        await out(tail)
                        tail = []
                    await out(await self._consult_events(messages, call.srv_id, call.exec_id, results))
            client_tools = False
            for events in held:
                index = self._index()
                client_tools = client_tools or (events[0].get("content_block") or {}).get("type") == "tool_use"
                tail.extend({**event, "index": index} for event in events)
                if events[-1].get("type") != "content_block_stop":
                    tail.append({"type": "content_block_stop", "index": index})
            if not calls or client_tools:
                break
            if tail:
                await out(tail)
            if legs >= self.config.max_executor_legs:
                log.warning("executor kept calling the advisor; stopping after %d legs", legs)
                stop_reason = "end_turn"
                break
            messages = _answer(messages, results)
        tail.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": self._usage(),
            }
        )
        tail.append({"type": "message_stop"})
        await out(tail)

    def _on_batch(self, batch: Batch) -> Awaitable[None]:
        # A function that hands back emit's awaitable, not a coroutine that awaits it (see
        # NOTHING): this runs for every group a leg sends.
        emit = self._emit
        assert emit is not None
        group: Batch = []
        try:
            self._relay(batch, group, self._acc, self._held, self._calls)
        except Exception as exc:
            return _emit_then_raise(emit, group, exc)
        return emit(group) if group else NOTHING

    def _relay(
        self,
        batch: Batch,
        out: Batch,
        acc: MessageAccumulator,
        held: list[list[dict[str, Any]]],
        calls: list[_Call],
    ) -> None:
        """Map one group of the executor's events onto the client's message: relay text and
        thinking live (re-indexed), turn advisor calls into ``server_tool_use``, hold client
        tools. Client events go to ``out``; a malformed stream raises."""
        index_map = self._blocks
        kept = acc.pending
        for event in batch:
            if type(event) is RawDelta:
                # Nearly every event: a delta of a block relayed live goes on as its bytes, and
                # the accumulator keeps them for a consult that may follow.
                target = index_map.get(event.index)
                if target is not None and target[0] == "text":
                    kept.append(event)
                    ref = target[1]
                    out.append(event if ref == event.index else raw_delta_at(event, ref))
                    continue
                event = raw_delta_event(event)  # a block held, an advisor call or no block
            kind = event.get("type")
            try:
                acc.feed(event)
                upstream_index = event.get("index", -1)
                target = index_map.get(upstream_index)
            except (TypeError, ValueError, AttributeError, IndexError, KeyError):
                raise _malformed(kind) from None
            if kind == "content_block_delta" or kind == "content_block_stop":
                if target is None:
                    continue  # a block never started, or already stopped: not relayed
                mode, ref = target
                if kind == "content_block_stop":
                    del index_map[upstream_index]
                if mode == "held":
                    held[ref].append(event)
                elif mode != "advisor":
                    # Copied only to re-index: a block keeps its index until a consult comes first.
                    out.append(event if ref == upstream_index else {**event, "index": ref})
                elif kind == "content_block_stop":
                    out.append({"type": "content_block_stop", "index": ref})
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if not isinstance(block, dict):
                    raise _malformed(kind)
                if not self._started or target is not None:
                    # Relayed, this would break the client's stream (advisor-wire-spec §4).
                    problem = "before message_start" if not self._started else "twice"
                    raise UpstreamError(502, f"the executor's stream started block {upstream_index} {problem}")
                if block.get("type") == "tool_use" and block.get("name") == ADVISOR_NAME:
                    exec_id = self._exec_id(block.get("id"))
                    call = _Call(upstream_index, exec_id, server_tool_use_id(exec_id))
                    calls.append(call)
                    index = self._index()
                    index_map[upstream_index] = ("advisor", index)
                    out.append(
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": server_tool_use_block(call.srv_id),
                        }
                    )
                    # Real advisor streams carry one empty input_json_delta (§4).
                    out.append(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": ""},
                        }
                    )
                elif block.get("type") == "tool_use" or calls:
                    # Client tools wait for the consults of this leg (§2.3 order:
                    # advisor pair first, then the client's tool_use blocks).
                    index_map[upstream_index] = ("held", len(held))
                    held.append([event])
                else:
                    index = self._index()
                    mode = "text" if block.get("type") in ("text", "thinking") else "live"
                    index_map[upstream_index] = (mode, index)
                    out.append({**event, "index": index})
            elif kind == "message_start":
                if not self._started:
                    message = dict(event.get("message") or {})
                    message["content"] = []
                    self._started = True
                    out.append({"type": "message_start", "message": message})

    def _open_blocks(self) -> list[int]:
        """Client indexes of blocks started and not yet stopped (held blocks are not sent yet)."""
        return sorted(ref for mode, ref in self._blocks.values() if mode != "held")

    async def _consult_events(
        self, messages: list[Any], srv_id: str, exec_id: str, results: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Run one consult; return its ``advisor_tool_result`` events (whole, in one start
        event, §4) and add the executor's ``tool_result`` to ``results``."""
        result = await self._consult(messages)
        block = advisor_result_block(srv_id, **result)
        index = self._index()
        results.append(advice_tool_result(exec_id, block["content"]))
        return [
            {"type": "content_block_start", "index": index, "content_block": block},
            {"type": "content_block_stop", "index": index},
        ]

    @staticmethod
    def _leg_content(content: list[dict[str, Any]], calls: list[_Call]) -> list[dict[str, Any]]:
        # The executor's own blocks of this leg, verbatim (thinking keeps its signature), with
        # the advisor calls in the canonical form later turns render from history (design §4).
        by_index = {call.upstream_index: call for call in calls}
        out = []
        for index, block in enumerate(content):
            if not block:
                continue
            call = by_index.get(index)
            out.append(advisor_tool_use(call.exec_id) if call else block)
        return out

    def _record_leg(self, usage: dict[str, Any]) -> None:
        self.leg_usages.append(usage)
        entry: dict[str, Any] = {"type": "message"}
        for key in _USAGE_SUMS:
            entry[key] = _int(usage.get(key))
        self.iterations.append(entry)

    def _usage(self) -> dict[str, Any]:
        # Top-level usage: every field summed over executor legs only; advisor tokens bill at
        # the advisor's rates and live only in iterations (advisor-wire-spec §3.2, D4).
        usage: dict[str, Any] = {}
        for leg in self.leg_usages:
            for key, value in leg.items():
                if key == "iterations":
                    continue
                if key in _USAGE_SUMS:
                    usage[key] = usage.get(key, 0) + _int(value)
                elif isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
                    bucket = usage.setdefault(key, {})
                    if isinstance(bucket, dict):
                        for k, v in value.items():
                            bucket[k] = bucket.get(k, 0) + v
                else:
                    usage[key] = value
        for key in _USAGE_SUMS:
            usage.setdefault(key, 0)
        usage["iterations"] = self.iterations
        return usage

    async def _consult(self, messages: list[Any]) -> dict[str, Any]:
        """Run one advisor leg; return the fields of its ``advisor_tool_result`` content."""
        self.consults += 1
        cap = self.tool.max_uses
        if (cap is not None and self.consults > cap) or (
            self.config.max_consults is not None and self.consults > self.config.max_consults
        ):
            return {"error_code": "max_uses_exceeded"}
        max_tokens = self.tool.max_tokens or self.config.advisor_max_tokens
        system = self.config.advisor_system_prompt or ADVISOR_SYSTEM_PROMPT
        if self.tool.max_tokens:
            system += budget_note(max_tokens)
        transcript = render_transcript(
            self.body,
            messages,
            max_block_chars=self.config.max_transcript_block_chars,
            max_chars=self.config.max_transcript_chars,
        )
        body: dict[str, Any] = {
            "model": self.tool.model,
            "max_tokens": max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": transcript}],
            "stream": True,
        }
        metadata = self.body.get("metadata")
        if isinstance(metadata, dict):
            body["metadata"] = metadata
        acc = MessageAccumulator()
        leg = Leg("advisor", body, self.advisor_headers, self.scope, max_bytes=self.config.max_leg_bytes)

        def feed(batch: Batch) -> Awaitable[None]:
            acc.feed_all(batch)
            return NOTHING

        try:
            # A bare deadline scope, not anyio.fail_after: same effect, a third of the cost
            # (fail_after is a generator-based context manager; ~6 µs per consult).
            with anyio.CancelScope(deadline=anyio.current_time() + self.config.advisor_timeout) as deadline:
                await run_leg(self.router, leg, feed)
            if deadline.cancelled_caught:
                raise TimeoutError(f"the advisor took longer than {self.config.advisor_timeout} s")
        except ClientGone:
            raise  # not the advisor's failure: the request is over
        except Exception as exc:
            code = advisor_error_code(exc)
            if isinstance(exc, UpstreamError | TimeoutError):
                log.warning("advisor leg failed (%s): %s", code, exc)
                _log_upstream_message(exc)
            else:
                log.exception("advisor leg failed (%s)", code)
            self._record_advisor(acc)
            return {"error_code": code}
        self._record_advisor(acc)
        if not acc.finished:
            log.warning("advisor stream ended before its message_delta")
            return {"error_code": "unavailable"}
        text = "".join(str(b.get("text", "")) for b in acc.content if b.get("type") == "text")
        stop = acc.message.get("stop_reason")
        if stop == "max_tokens":
            text += f"\n\n[Advisor output truncated at max_tokens={max_tokens}.]"
        if not text.strip() and stop != "refusal":
            return {"error_code": "unavailable"}
        # stop_reason appears on results when the tool sets max_tokens (§2.2); a refusal is
        # passed on too, since it is what makes Claude Code show "Advisor declined".
        show_stop = self.tool.max_tokens is not None or stop == "refusal"
        return {"text": text, "stop_reason": stop if show_stop else None}

    def _record_advisor(self, acc: MessageAccumulator) -> None:
        usage = acc.message.get("usage")
        if not acc.message or not isinstance(usage, dict):
            return  # no sub-inference ran (or none we can bill)
        entry: dict[str, Any] = {"type": "advisor_message", "model": self.tool.model}
        for key in _USAGE_SUMS:
            entry[key] = _int(usage.get(key))
        self.iterations.append(entry)


def _log_upstream_message(exc: Exception) -> None:
    # The upstream's own message may quote the request or the model's output: DEBUG only
    # (every level above holds sizes, positions and types; UpstreamError.detail).
    if isinstance(exc, UpstreamError):
        log.debug("the upstream's error message: %r", exc.error.get("message"))


async def _emit_then_raise(emit: Emit, group: Batch, exc: Exception) -> None:
    if group:  # sent first, so the blocks they open can be closed
        await emit(group)
    raise exc


def _tool_use_ids(messages: list[Any]) -> set[str]:
    ids = set()
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    ids.add(str(block.get("id")))
    return ids


_EVENT_TYPES = frozenset(
    ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta")
)


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


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
