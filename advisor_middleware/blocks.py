"""Pydantic models of the advisor tool entry and of the blocks we synthesise; the ids."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

ADVISOR_TOOL_TYPE = "advisor_20260301"
ADVISOR_NAME = "advisor"


def is_advisor_block(block: Any) -> bool:
    """Whether a content block is the advisor's call, its result, or a ``tool_addition`` /
    ``tool_removal`` of its tool (docs/protocol.md §2, §7)."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind in ("tool_addition", "tool_removal"):
        tool = block.get("tool")
        return isinstance(tool, dict) and tool.get("name") == ADVISOR_NAME
    return kind == "advisor_tool_result" or (kind == "server_tool_use" and block.get("name") == ADVISOR_NAME)


AdvisorErrorCode = Literal[
    "max_uses_exceeded",
    "too_many_requests",
    "overloaded",
    "prompt_too_long",
    "execution_time_exceeded",
    "model_not_found",
    "unavailable",
]
"""The seven codes of ``advisor_tool_result_error`` (docs/protocol.md §2)."""
ADVISOR_ERROR_CODES = frozenset(get_args(AdvisorErrorCode))


class AdvisorTool(BaseModel):
    """The ``advisor_20260301`` entry of ``tools``; unknown fields are kept, as Anthropic keeps
    adding optional ones (docs/protocol.md §1)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["advisor_20260301"]
    name: Literal["advisor"]
    model: StrictStr = Field(min_length=1)
    max_uses: StrictInt | None = Field(default=None, ge=1)
    # Anthropic asks for at least 1024 (docs/protocol.md §1).
    max_tokens: StrictInt | None = Field(default=None, ge=1024)
    defer_loading: StrictBool | None = None
    caching: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class _ServerToolUse(BaseModel):
    type: Literal["server_tool_use"] = "server_tool_use"
    id: str
    name: Literal["advisor"] = "advisor"
    input: dict[str, Any] = Field(default_factory=dict)


class _AdvisorResult(BaseModel):
    type: Literal["advisor_result"] = "advisor_result"
    text: str
    stop_reason: str | None = None


class _AdvisorError(BaseModel):
    type: Literal["advisor_tool_result_error"] = "advisor_tool_result_error"
    error_code: str


class _AdvisorToolResult(BaseModel):
    type: Literal["advisor_tool_result"] = "advisor_tool_result"
    tool_use_id: str
    content: _AdvisorResult | _AdvisorError


def server_tool_use_block(srv_id: str) -> dict[str, Any]:
    return _ServerToolUse(id=srv_id).model_dump()


def advisor_result_block(
    srv_id: str, *, text: str | None = None, stop_reason: str | None = None, error_code: str | None = None
) -> dict[str, Any]:
    """An ``advisor_tool_result`` block: the advice, or an error with one of the seven codes."""
    content: _AdvisorResult | _AdvisorError
    if error_code is not None:
        assert error_code in ADVISOR_ERROR_CODES, error_code
        content = _AdvisorError(error_code=error_code)
    else:
        content = _AdvisorResult(text=text or "", stop_reason=stop_reason)
    return _AdvisorToolResult(tool_use_id=srv_id, content=content).model_dump(exclude_none=True)


# The client sees ``srvtoolu_<escaped executor id>``, a bijection, so a later turn renders history
# with exactly the id the executor saw (docs/protocol.md §6). The escape keeps the API's pattern
# ``^srvtoolu_[a-zA-Z0-9_]+$``: "_" doubles, any other character becomes "_x" + 2 hex digits,
# "_u" + 4 or "_U" + 6.
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9]")
_SRV_PREFIX = "srvtoolu_"
_UNESCAPE = re.compile(r"__|_x[0-9a-f]{2}|_u[0-9a-f]{4}|_U[0-9a-f]{6}|_")


def server_tool_use_id(exec_id: str) -> str:
    # One regex pass over the id: only the characters that need escaping cost a call.
    return _SRV_PREFIX + _NOT_PLAIN.sub(_escape, exec_id)


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "_":
        return "__"
    cp = ord(ch)
    return f"_x{cp:02x}" if cp < 0x100 else f"_u{cp:04x}" if cp < 0x10000 else f"_U{cp:06x}"


def executor_id(srv_id: str) -> str:
    """The executor-facing id for a ``server_tool_use`` id; one we could not have minted as it is."""
    if not srv_id.startswith(_SRV_PREFIX):
        return srv_id
    try:
        decoded = _UNESCAPE.sub(_unescape, srv_id[len(_SRV_PREFIX) :])
        decoded.encode()
    except ValueError:  # an escape past U+10FFFF, or of a lone surrogate: not one of ours
        return srv_id
    # The escaping is canonical (one spelling per id): any other spelling, such as "_x41" for
    # "A" or a lone "_", is not ours.
    return decoded if decoded and server_tool_use_id(decoded) == srv_id else srv_id


def _unescape(match: re.Match[str]) -> str:
    token = match.group()
    return "_" if len(token) <= 2 else chr(int(token[2:], 16))
