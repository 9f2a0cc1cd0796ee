"""Prompt caches that bill a Messages request the way providers do, for the demo gateway, the
tests and the benchmark (docs/protocol.md §4, prompt caching).

:class:`PromptCache` follows Anthropic's published rule: a request is a sequence of content
blocks (tools, then system, then messages); each block marked with ``cache_control`` is a
breakpoint, and the prefix up to it is written to the cache (if it is at least ``min_tokens``
long); a request reads the longest prefix written earlier, and still alive, that ends at a block
boundary at most ``lookback`` blocks before one of its breakpoints. Entries live for their TTL
(5 minutes or an hour), refreshed by each read. :class:`ImplicitPrefixCache` is the rule of
providers that cache without markers: a request reads the longest byte prefix it shares with any
earlier request, in steps of 1,024 tokens. Tokens are estimated at four characters each.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydantic_core

__all__ = ["TTL_SECONDS", "ImplicitPrefixCache", "PromptCache"]

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
MAX_BREAKPOINTS = 4


class PromptCache:
    """Anthropic's explicit prompt cache. ``usage(body)`` bills one request and updates the
    cache; ``clock`` gives the time in seconds (tests move it to expire entries)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, min_tokens: int = 1024, lookback: int = 20
    ) -> None:
        self.clock = clock
        self.min_tokens = min_tokens
        self.lookback = lookback
        self._entries: dict[bytes, tuple[float, str]] = {}
        """Prefix hash -> (expiry time, TTL name)."""

    def usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request's input usage as Anthropic reports it. Raises ``ValueError`` for more
        than four breakpoints, as Anthropic answers 400."""
        blocks = list(_blocks(body))
        hashes, tokens = _prefixes(str(body.get("model")), [text for text, _ in blocks])
        breakpoints = [(at, ttl) for at, (_, ttl) in enumerate(blocks) if ttl is not None]
        if len(breakpoints) > MAX_BREAKPOINTS:
            raise ValueError(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided.")
        now = self.clock()
        self._entries = {key: entry for key, entry in self._entries.items() if entry[0] > now}
        read_at = max((self._hit(hashes, at, now) for at, _ in breakpoints), default=-1)
        read = tokens[read_at] if read_at >= 0 else 0
        cached = read
        written = dict.fromkeys(TTL_SECONDS, 0)
        for at, ttl in breakpoints:
            if tokens[at] > cached and tokens[at] >= self.min_tokens:
                written[ttl] += tokens[at] - cached
                cached = tokens[at]
                self._entries[hashes[at]] = (now + TTL_SECONDS[ttl], ttl)
        return {
            "input_tokens": (tokens[-1] if tokens else 0) - cached,
            "cache_creation_input_tokens": sum(written.values()),
            "cache_read_input_tokens": read,
            "cache_creation": {f"ephemeral_{ttl}_input_tokens": n for ttl, n in written.items()},
        }

    def _hit(self, hashes: list[bytes], breakpoint: int, now: float) -> int:
        """The last block of the longest live prefix within the lookback of ``breakpoint``
        (refreshed), or -1."""
        for at in range(breakpoint, max(breakpoint - self.lookback, 0) - 1, -1):
            entry = self._entries.get(hashes[at])
            if entry is not None:
                self._entries[hashes[at]] = (now + TTL_SECONDS[entry[1]], entry[1])
                return at
        return -1


class ImplicitPrefixCache:
    """A cache without markers (OpenAI, DeepSeek, Gemini): each request reads the longest prefix
    of its blocks' bytes it shares with any earlier request, in whole steps of ``step_tokens``;
    nothing is billed for writing, and nothing expires."""

    def __init__(self, *, step_tokens: int = 1024) -> None:
        self.step = step_tokens * 4  # characters
        self._seen: set[bytes] = set()

    def usage(self, body: dict[str, Any]) -> dict[str, Any]:
        text = "".join(block for block, _ in _blocks(body))
        digest = hashlib.sha256(str(body.get("model")).encode())
        steps = 0
        for end in range(self.step, len(text) + 1, self.step):
            digest.update(text[end - self.step : end].encode())
            key = digest.digest()  # of the whole prefix: a match means every earlier step matched
            if key in self._seen:
                steps = end // self.step
            self._seen.add(key)
        read = steps * self.step // 4
        return {
            "input_tokens": _tokens(text) - read,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": read,
        }


def _blocks(body: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """Each content block of ``body`` in cache order, as its text (its JSON without
    ``cache_control``, with its message's place and role) and its breakpoint's TTL, if any."""
    items: list[tuple[Any, Any]] = []
    for tool in body.get("tools") or ():
        items.append(("tool", tool))
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or ():
        items.append(("system", block))
    for at, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        role = message.get("role") if isinstance(message, dict) else None
        for block in [content] if isinstance(content, str) else content or ():
            items.append((f"{at}:{role}", block))
    automatic = body.get("cache_control")
    for index, (where, block) in enumerate(items):
        marker = block.get("cache_control") if isinstance(block, dict) else None
        if index == len(items) - 1 and isinstance(automatic, dict):
            marker = automatic  # top-level cache_control: a breakpoint on the last block
        if isinstance(block, dict):
            block = {k: v for k, v in block.items() if k != "cache_control"}
        ttl = ("1h" if marker.get("ttl") == "1h" else "5m") if isinstance(marker, dict) else None
        yield pydantic_core.to_json([where, block]).decode(), ttl


def _prefixes(model: str, texts: list[str]) -> tuple[list[bytes], list[int]]:
    """The hash and the token count of each prefix of ``texts`` (ending at each block)."""
    digest = hashlib.sha256(model.encode())
    hashes: list[bytes] = []
    tokens: list[int] = []
    total = 0
    for text in texts:
        digest.update(len(text).to_bytes(8, "big") + text.encode())
        hashes.append(digest.digest())
        total += _tokens(text)
        tokens.append(total)
    return hashes, tokens


def _tokens(text: str) -> int:
    return -(-len(text) // 4)
