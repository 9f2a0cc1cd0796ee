"""What to do with one parsed ``/v1/messages`` body: pass it on, rewrite it, or orchestrate it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .blocks import ADVISOR_NAME, ADVISOR_TOOL_TYPE, AdvisorTool
from .errors import AdvisorRequestError
from .history import HistoryInfo, has_advisor_history, render_history

__all__ = ["Plan", "classify", "involves_advisor"]


@dataclass
class Plan:
    action: str
    """``"pass"`` (replay the original bytes), ``"rewrite"`` (forward ``body``, history rendered,
    no advisor) or ``"orchestrate"``."""
    body: dict[str, Any]
    tool_index: int = -1
    tool: AdvisorTool | None = None
    history: tuple[list[Any], HistoryInfo] | None = None
    """For ``"orchestrate"``: ``render_history`` of the messages, so the loop need not redo it."""


def involves_advisor(data: dict[str, Any]) -> bool:
    """Whether a Messages request offers the advisor tool or its messages hold advisor blocks."""
    messages = data.get("messages")
    return bool(_advisor_entries(data)) or (isinstance(messages, list) and has_advisor_history(messages))


def _advisor_entries(data: dict[str, Any]) -> list[tuple[int, Any]]:
    """``(index, entry)`` of each ``advisor_20260301`` entry of ``tools`` (docs/protocol.md §1)."""
    tools = data.get("tools")
    if not isinstance(tools, list):
        return []
    return [(i, t) for i, t in enumerate(tools) if isinstance(t, dict) and t.get("type") == ADVISOR_TOOL_TYPE]


def classify(data: dict[str, Any]) -> Plan:
    """What to do with the request ``data``; :class:`AdvisorRequestError` if its advisor parts are invalid."""
    if not involves_advisor(data):
        return Plan("pass", data)
    entries = _advisor_entries(data)
    messages = data.get("messages")
    if not isinstance(messages, list):  # then the advisor is in tools (involves_advisor)
        raise AdvisorRequestError("messages: Input should be a valid list")
    if len(entries) > 1:
        raise AdvisorRequestError(f"tools.{entries[1][0]}: only one advisor_20260301 tool may be given")
    tool: AdvisorTool | None = None
    index = -1
    if entries:
        index, raw = entries[0]
        try:
            tool = AdvisorTool.model_validate(raw)
        except ValidationError as exc:
            raise AdvisorRequestError(_describe(exc, index)) from None
        if not isinstance(data.get("stream", False), bool):
            raise AdvisorRequestError("stream: Input should be a valid boolean")
        if not isinstance(data.get("model"), str):
            raise AdvisorRequestError("model: Field required")
    rendered, info = render_history(messages)
    if tool is not None and not info.advisor_removed:
        return Plan("orchestrate", data, index, tool, (rendered, info))
    # No advisor on this turn (absent, or switched off by a tool_removal): forward with the
    # history rendered and the tool entry gone; the host answers as usual.
    if info.pending:
        rendered, _ = render_history(messages, resume=False)  # nothing can answer a pending call
    body = dict(data)
    body["messages"] = rendered
    if entries:
        remaining = [t for i, t in enumerate(data["tools"]) if i != index]
        if remaining:
            body["tools"] = remaining
            choice = body.get("tool_choice")
            if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") == ADVISOR_NAME:
                # The advisor is off on this turn: forcing it would make the host answer 400.
                body["tool_choice"] = {k: v for k, v in choice.items() if k != "name"} | {"type": "auto"}
        else:
            body.pop("tools", None)
            if isinstance(body.get("tool_choice"), dict):
                body.pop("tool_choice")
    return Plan("rewrite", body)


def _describe(exc: ValidationError, index: int) -> str:
    # Anthropic names the field: "tools.3.model: Field required" (docs/protocol.md §1).
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if err["loc"] == ("max_tokens",) and err["type"] == "greater_than_equal":
            message = "must be at least 1024"
        parts.append(f"tools.{index}.{loc}: {message}")
    return "; ".join(parts)
