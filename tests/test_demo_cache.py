"""The cache-faithful prompt caches the demo, the tests and the benchmark bill with, against the
rules providers publish: Anthropic's breakpoints, block boundaries, 20-block lookback, minimum
length, TTLs and breakpoint limit; and the implicit byte-prefix cache in 1,024-token steps."""

from __future__ import annotations

from typing import Any

import pytest

from advisor_middleware.demo_cache import ImplicitPrefixCache, PromptCache

FIVE_MINUTES = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def block(n: int, chars: int = 400, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """A text block of about ``chars / 4`` tokens, distinct per ``n``."""
    out: dict[str, Any] = {"type": "text", "text": f"{n:04d}" + "x" * (chars - 4)}
    if cache is not None:
        out["cache_control"] = cache
    return out


def request(blocks: list[dict[str, Any]], model: str = "opus", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": blocks}], **extra}


def billed(usage: dict[str, Any]) -> tuple[int, int, int]:
    return usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"], usage["input_tokens"]


def test_a_breakpoint_writes_its_prefix_and_the_same_prefix_is_read_later() -> None:
    # A large system block marked for caching, then a question: the first request writes the
    # system prefix, the second reads it; the question is billed as input both times.
    cache = PromptCache(min_tokens=1024)
    system = [
        {"type": "text", "text": "Analyse this book."},
        {"type": "text", "text": "b" * 40_000, "cache_control": FIVE_MINUTES},
    ]
    first = cache.usage(request([block(1)], system=system))
    second = cache.usage(request([block(2)], system=system))
    assert first["cache_read_input_tokens"] == 0
    written = first["cache_creation_input_tokens"]
    assert written > 10_000
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0}
    assert billed(second)[:2] == (written, 0)
    assert second["input_tokens"] == first["input_tokens"]  # the question, uncached
    assert second["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}


def test_a_prefix_under_the_minimum_is_not_cached() -> None:
    cache = PromptCache(min_tokens=1024)
    short = request([block(1, 2000, FIVE_MINUTES)])  # about 500 tokens
    for _ in range(2):
        read, written, uncached = billed(cache.usage(short))
        assert (read, written) == (0, 0) and uncached > 400


@pytest.mark.parametrize(("later", "hit"), [(1, True), (20, True), (21, False)])
def test_a_breakpoint_reads_an_earlier_one_at_most_twenty_blocks_back(later: int, hit: bool) -> None:
    cache = PromptCache(min_tokens=100)
    base = [block(n) for n in range(9)]
    cache.usage(request([*base, block(9, cache=FIVE_MINUTES)]))
    grown = [*base, block(9), *(block(100 + n) for n in range(later - 1)), block(999, cache=FIVE_MINUTES)]
    read, wrote, uncached = billed(cache.usage(request(grown)))
    assert read == (sum(_tokens(b) for b in base) + _tokens(block(9)) if hit else 0)
    # Everything up to the breakpoint is read or written; nothing comes after it here.
    assert read + wrote == sum(_tokens(b) for b in grown) and uncached == 0


def test_moving_the_breakpoint_keeps_the_prefix() -> None:
    # cache_control is not part of what is cached: the block that carried it reads the same
    # without it.
    cache = PromptCache(min_tokens=100)
    blocks = [block(n) for n in range(5)]
    first = cache.usage(request([*blocks[:-1], block(4, cache=FIVE_MINUTES)]))
    second = cache.usage(request([*blocks, block(5, cache=FIVE_MINUTES)]))
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == _tokens(block(5))


def test_entries_expire_after_their_ttl_and_a_read_refreshes_them() -> None:
    clock = Clock()
    cache = PromptCache(clock=clock, min_tokens=100)
    short_lived = request([block(1, 4000, FIVE_MINUTES)])
    long_lived = request([block(2, 4000, ONE_HOUR)])
    assert billed(cache.usage(short_lived))[0] == 0
    assert cache.usage(long_lived)["cache_creation"]["ephemeral_1h_input_tokens"] == 1000 + _overhead(block(2, 4000))
    clock.now += 299
    assert billed(cache.usage(short_lived))[0] > 0  # read: alive for another 300 s from now
    clock.now += 299
    assert billed(cache.usage(short_lived))[0] > 0
    clock.now += 301
    assert billed(cache.usage(short_lived))[0] == 0  # expired, written again
    assert billed(cache.usage(long_lived))[0] > 0  # an hour has not passed since its last read


def test_ttls_bill_the_writes_of_each_breakpoint() -> None:
    cache = PromptCache(min_tokens=100)
    usage = cache.usage(request([block(1, 4000, ONE_HOUR), block(2, 2000), block(3, 2000, FIVE_MINUTES), block(4)]))
    by_ttl = usage["cache_creation"]
    assert by_ttl["ephemeral_1h_input_tokens"] == _tokens(block(1, 4000))
    assert by_ttl["ephemeral_5m_input_tokens"] == _tokens(block(2, 2000)) + _tokens(block(3, 2000))
    assert usage["cache_creation_input_tokens"] == sum(by_ttl.values())
    assert usage["input_tokens"] == _tokens(block(4))


def test_more_than_four_breakpoints_is_refused() -> None:
    cache = PromptCache()
    cache.usage(request([block(n, cache=FIVE_MINUTES) for n in range(4)]))
    with pytest.raises(ValueError, match="maximum of 4"):
        cache.usage(request([block(n, cache=FIVE_MINUTES) for n in range(5)]))


def test_top_level_cache_control_marks_the_last_block() -> None:
    cache = PromptCache(min_tokens=100)
    blocks = [block(n) for n in range(6)]
    first = cache.usage(request(blocks, cache_control=FIVE_MINUTES))
    second = cache.usage(request([*blocks, block(6)], cache_control=FIVE_MINUTES))
    assert billed(first)[0] == 0 and first["input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


def test_caches_are_per_model() -> None:
    cache = PromptCache(min_tokens=100)
    marked = [block(1, 4000, FIVE_MINUTES)]
    cache.usage(request(marked, model="opus"))
    assert billed(cache.usage(request(marked, model="sonnet")))[0] == 0


def test_the_implicit_cache_reads_the_longest_shared_prefix_in_whole_steps() -> None:
    cache = ImplicitPrefixCache()
    first = [block(n, 4000) for n in range(5)]  # about 5,000 tokens
    assert billed(cache.usage(request(first)))[0] == 0
    usage = cache.usage(request([*first[:3], block(99, 4000)]))
    # About 3,000 tokens in common: two whole steps of 1,024 are read, no write billed.
    assert billed(usage)[:2] == (2048, 0)
    assert usage["input_tokens"] + 2048 == _implicit_tokens(request([*first[:3], block(99, 4000)]))
    # The markers are no part of the bytes; another model shares nothing.
    assert billed(cache.usage(request([*first[:-1], block(4, 4000, FIVE_MINUTES)])))[0] == 4096
    assert billed(cache.usage(request(first, model="other")))[0] == 0


def _overhead(one: dict[str, Any]) -> int:
    return _tokens(one) - len(one["text"]) // 4


def _tokens(one: dict[str, Any]) -> int:
    """A block's tokens as the caches estimate them: its JSON, with its place, at four
    characters a token."""
    cache = PromptCache(min_tokens=0)
    return int(cache.usage(request([{k: v for k, v in one.items() if k != "cache_control"}]))["input_tokens"])


def _implicit_tokens(body: dict[str, Any]) -> int:
    usage = ImplicitPrefixCache().usage(body)
    return int(usage["input_tokens"])
