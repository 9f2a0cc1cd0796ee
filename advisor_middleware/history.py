"""Render a conversation's advisor history for the executor.

Clients replay assistant content verbatim: ``[text, server_tool_use, advisor_tool_result, text,
tool_use]``. The executor gets exactly what it saw during the loop: the assistant message split
at each advisor pair into ``assistant[..., tool_use(advisor)]``, ``user[tool_result(advice)]``,
``assistant[...]``, so the bytes of turn N+1's request start with those of turn N's and provider
prompt caches keep hitting. ``role: "system"`` messages (Claude Code's deferred shape,
docs/protocol.md §7) become user-side text, with the advisor's ``tool_addition`` /
``tool_removal`` blocks taken out: any executor model can read the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .blocks import ADVISOR_NAME, executor_id, is_advisor_block

log = logging.getLogger("advisor_middleware")

_RESULT_TYPES = ("advisor_result", "advisor_redacted_result", "advisor_tool_result_error")

REDACTED_PLACEHOLDER = "[The advisor's advice for this step is encrypted and cannot be shown here.]"


def advisor_tool_use(exec_id: str) -> dict[str, Any]:
    """The executor-side call. ``input`` is always ``{}``: nothing the executor puts there reaches
    the advisor (docs/protocol.md §2), and a canonical form keeps history byte-stable."""
    return {"type": "tool_use", "id": exec_id, "name": ADVISOR_NAME, "input": {}}


def advice_tool_result(exec_id: str, content: Any) -> dict[str, Any]:
    """The ``tool_result`` the executor sees for one consult, from the ``advisor_tool_result``
    ``content`` (one object per the spec; lists and strings from older clients are read too).
    The loop and later turns both build it here, so the two are byte-identical."""
    if isinstance(content, list):
        parts = [c for c in content if isinstance(c, dict)]
        # One advisor object in a list is that object; anything else (e.g. text blocks) is advice text.
        single = len(parts) == 1 and parts[0].get("type") in _RESULT_TYPES
        texts = [part["text"] for part in parts if isinstance(part.get("text"), str)]
        content = parts[0] if single else {"type": "advisor_result", "text": "\n\n".join(texts)}
    if isinstance(content, str):
        content = {"type": "advisor_result", "text": content}
    if not isinstance(content, dict):
        content = {"type": "advisor_tool_result_error", "error_code": "unavailable"}
    kind = content.get("type")
    if kind == "advisor_result":
        return {"type": "tool_result", "tool_use_id": exec_id, "content": str(content.get("text") or "")}
    if kind == "advisor_redacted_result":
        # Never forward the encrypted blob: only Anthropic can read it (docs/protocol.md §6).
        log.info("advisor history: encrypted advice replaced by a placeholder for the executor")
        return {"type": "tool_result", "tool_use_id": exec_id, "content": REDACTED_PLACEHOLDER}
    code = content.get("error_code") or "unavailable"
    message = f"The advisor is unavailable ({code}). Continue without its advice."
    return {"type": "tool_result", "tool_use_id": exec_id, "content": message, "is_error": True}


@dataclass
class HistoryInfo:
    had_advisor_blocks: bool = False
    advisor_removed: bool | None = None
    """Last ``tool_addition``/``tool_removal`` of the advisor in system messages: True after a
    removal (no advisor on this turn), False after an addition, None if neither appears."""
    pending: list[tuple[str, str]] = field(default_factory=list)
    """``(executor id, srvtoolu id)`` of advisor calls left unanswered at the end of the
    conversation: a resumed ``pause_turn`` (docs/protocol.md §6). The rendered messages keep
    their ``tool_use``; the loop runs them first and adds the ``tool_result``."""


def has_advisor_history(messages: list[Any]) -> bool:
    """Whether any message holds an advisor block (:func:`~advisor_middleware.blocks.is_advisor_block`)."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(is_advisor_block(block) for block in content):
            return True
    return False


def render_history(messages: list[Any], *, resume: bool = True) -> tuple[list[Any], HistoryInfo]:
    """The executor's view of ``messages``; the input is not modified (the messages themselves may
    be shared with it: treat both as read-only). With ``resume=False`` (no advisor on this turn to
    answer them) pending calls are dropped like any dangling one."""
    if _plain(messages):
        # Most requests that offer the advisor (a Claude Code turn) have nothing to render: one
        # light walk instead of a render that copies every message. What _render makes of such
        # a history is equal to it.
        return list(messages), HistoryInfo()
    return _render(messages, resume)


_NATIVE = frozenset({"server_tool_use", "advisor_tool_result", "tool_addition", "tool_removal"})


def _plain(messages: list[Any]) -> bool:
    """Whether rendering would give ``messages`` back unchanged: user and assistant turns that
    alternate, each ``{"role", "content"}`` with content, and no advisor block anywhere."""
    previous = None
    for message in messages:
        if not isinstance(message, dict) or len(message) != 2:
            return False
        role = message.get("role")
        content = message.get("content")
        if role == previous or role not in ("user", "assistant") or not content or not _plain_content(content):
            return False
        previous = role
    return True


def _plain_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(isinstance(b, dict) and b.get("type") not in _NATIVE for b in content)


def _render(messages: list[Any], resume: bool) -> tuple[list[Any], HistoryInfo]:
    render = _Render(messages, resume)
    for position, message in enumerate(messages):
        render.message(position, message)
    render.pay()
    return render.out, render.info


class _Render:
    """One render of a history: the messages made so far, and the advisor calls whose results
    are still to place."""

    def __init__(self, messages: list[Any], resume: bool) -> None:
        self.info = HistoryInfo()
        self.out: list[Any] = []
        self.results, resumable = _scan(messages)
        self.resumable = resumable if resume else {}
        self.owed: list[dict[str, Any]] = []  # tool_results for calls answered in a later message
        self.consumed: set[int] = set()  # id() of result blocks already placed
        self.called: set[str] = set()  # ids of the calls rendered so far
        self.waiting: dict[str, str] = {}  # rendered calls with a result still to place: srvtoolu id -> executor id
        self.turn: list[Any] = []  # the assistant blocks since the last consult split the message

    def message(self, position: int, message: Any) -> None:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role == "user" and self.owed:
            blocks = self.owed + _as_blocks(content) if isinstance(content, (list, str)) else self.owed
            self.owed = []
            self._push("user", blocks)
            return
        self.pay()
        if role == "system":
            self._system(message, content)
        elif role == "assistant" and isinstance(content, list) and _has_advisor_blocks(content):
            self._assistant(position, content)
        elif isinstance(role, str) and set(message) <= {"role", "content"} and isinstance(content, (list, str)):
            self._push(role, content)
        else:
            self.out.append(dict(message) if isinstance(message, dict) else message)

    def _system(self, message: dict[str, Any], content: Any) -> None:
        """A system message as user-side reminders, the advisor's tool_addition/tool_removal
        taken out; blocks of other types stay in a system message of their own."""
        if isinstance(content, str):
            self._push("user", [_reminder(content)])
            return
        if not isinstance(content, list):
            self.out.append(dict(message))
            return
        texts: list[Any] = []
        rest: list[Any] = []
        for block in content:
            if is_advisor_block(block) and block["type"] in ("tool_addition", "tool_removal"):
                self.info.had_advisor_blocks = True
                self.info.advisor_removed = block["type"] == "tool_removal"
                # Keep the client's cache breakpoint when the block carrying it goes away.
                cache_control = block.get("cache_control")
                if cache_control is not None and texts and "cache_control" not in texts[-1]:
                    texts[-1]["cache_control"] = cache_control
            elif _is_type(block, "text"):
                texts.append(_reminder(str(block.get("text", "")), block.get("cache_control")))
            else:
                rest.append(block)
        self._push("user", texts)
        if rest:
            self.out.append({**message, "content": rest})

    def _assistant(self, position: int, content: list[Any]) -> None:
        """An assistant message with advisor blocks, split at each consult."""
        self.info.had_advisor_blocks = True
        self.turn = []
        for block in content:
            if _is_advisor_call(block):
                self._call(position, block)
            elif _is_type(block, "advisor_tool_result"):
                self._result(block)
            else:
                self.turn.append(block)
        # Calls answered only in a later message (a pause, then its resumption): their results
        # open the next user turn.
        self.owed = self._answers()
        self._push("assistant", self.turn)

    def _call(self, position: int, block: dict[str, Any]) -> None:
        srv_id = str(block.get("id", ""))
        exec_id = executor_id(srv_id)
        if srv_id in self.called:
            return  # a call id used twice: its result is already placed, or never comes
        self.called.add(srv_id)
        if srv_id in self.results:
            self.waiting[srv_id] = exec_id
        elif srv_id in self.resumable and position == self.resumable[srv_id]:
            self.info.pending.append((exec_id, srv_id))
        else:
            # A call with no result cannot be shown to the executor (it would demand a
            # tool_result): drop it, keeping its neighbours, as Claude Code does.
            return
        self.turn.append(advisor_tool_use(exec_id))

    def _result(self, block: dict[str, Any]) -> None:
        srv_id = str(block.get("tool_use_id", ""))
        if id(block) in self.consumed:
            return
        if srv_id in self.waiting and self.results[srv_id] is block:
            # A consult splits the executor's turn here. Every call before this point is
            # answered now: a tool_use needs its tool_result in the very next message.
            self._push("assistant", self.turn)
            self._push("user", self._answers())
            self.turn = []
            return
        # An orphan (its call is gone, e.g. after /compact): keep the advice as text instead of
        # the 400 the native API gives.
        advice = advice_tool_result("orphan", block.get("content"))["content"]
        self.turn.append({"type": "text", "text": f"[Earlier advisor response]\n{advice}"})

    def _push(self, role: str, content: list[Any] | str) -> None:
        if not content:
            return
        out = self.out
        prev = out[-1] if out else None
        if isinstance(prev, dict) and prev.get("role") == role and set(prev) <= {"role", "content"}:
            # Merged in place: a list here is always one this render made (below), and
            # building a new one per message would copy a run of N messages N times.
            merged = prev["content"]
            if not isinstance(merged, list):
                merged = prev["content"] = _as_blocks(merged)
            merged.extend(_as_blocks(content))
        else:
            out.append({"role": role, "content": content if isinstance(content, str) else list(content)})

    def _answers(self) -> list[dict[str, Any]]:
        """The results of the waiting calls, in call order, wherever they sit in the history."""
        placed = []
        for srv_id, exec_id in self.waiting.items():
            answer = self.results[srv_id]
            self.consumed.add(id(answer))
            placed.append(advice_tool_result(exec_id, answer.get("content")))
        self.waiting.clear()
        return placed

    def pay(self) -> None:
        """Answer calls whose result came in a later message at the head of the next user turn."""
        if self.owed:
            self._push("user", self.owed)
            self.owed = []


def _scan(messages: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """First pass: for each advisor call, where its result is (message index, block), and which
    unanswered calls are resumable: in the last assistant message after its last consult (an
    answered call there would split them off from the end), followed by nothing or by one user
    message of tool results only (the mixed-turn shape, docs/protocol.md §6)."""
    calls: dict[str, int] = {}  # srvtoolu id -> the message that makes the call first
    results: dict[str, dict[str, Any]] = {}
    last_assistant = -1
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            continue
        if message.get("role") == "assistant":
            last_assistant = position
        _note_calls(position, message["content"], calls, results)
    if last_assistant < 0:
        return results, {}
    tail = messages[last_assistant + 1 :]
    if tail and not (len(tail) == 1 and _only_tool_results(tail[0])):
        return results, {}
    return results, _resumable(last_assistant, messages[last_assistant]["content"], calls, results)


def _note_calls(position: int, content: list[Any], calls: dict[str, int], results: dict[str, dict[str, Any]]) -> None:
    """Adds the advisor calls of one message to ``calls``, and the first result of each call
    made so far to ``results``."""
    for block in content:
        if _is_advisor_call(block):
            calls.setdefault(str(block.get("id", "")), position)
        elif _is_type(block, "advisor_tool_result"):
            srv_id = str(block.get("tool_use_id", ""))
            if srv_id in calls and srv_id not in results:
                results[srv_id] = block


def _resumable(
    position: int, content: list[Any], calls: dict[str, int], results: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """The unanswered calls of the last assistant message (at ``position``) after its last
    consult, each to ``position``."""
    resumable: dict[str, int] = {}
    for block in content:
        if _is_advisor_call(block):
            srv_id = str(block.get("id", ""))
            if srv_id not in results and calls[srv_id] == position:
                resumable[srv_id] = position
        elif _is_type(block, "advisor_tool_result"):
            srv_id = str(block.get("tool_use_id", ""))
            if calls.get(srv_id) == position and results.get(srv_id) is block:
                resumable = {}  # a consult of this message ends after them
    return resumable


def _only_tool_results(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) and message.get("role") == "user" else None
    return bool(content) and isinstance(content, list) and all(_is_type(b, "tool_result") for b in content)


def _is_type(block: Any, kind: str) -> bool:
    return isinstance(block, dict) and block.get("type") == kind


def _is_advisor_call(block: Any) -> bool:
    return _is_type(block, "server_tool_use") and block.get("name") == ADVISOR_NAME


def _has_advisor_blocks(content: list[Any]) -> bool:
    return any(_is_type(b, "advisor_tool_result") or _is_advisor_call(b) for b in content)


def _as_blocks(content: Any) -> list[Any]:
    return content if isinstance(content, list) else [{"type": "text", "text": str(content)}]


def _reminder(text: str, cache_control: Any = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": f"<system-reminder>\n{text}\n</system-reminder>"}
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block
