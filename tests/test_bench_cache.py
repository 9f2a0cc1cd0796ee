"""The prompt-caching row of the benchmark: a scripted Claude-Code-like session, counted in
tokens by cache-faithful hosts (no timings), meets its goals."""

from __future__ import annotations

import itertools

import anyio

from bench.cache import cache_section, measure_cache


def test_the_cached_session_reads_most_advisor_input_from_cache() -> None:
    runs = {(run.host, run.caching): run for run in anyio.run(measure_cache)}
    assert all(len(run.consults) == 8 for run in runs.values())
    off, on = runs["explicit", False], runs["explicit", True]
    assert off.tokens()[1:] == (0, 0)  # nothing marked: Anthropic caches nothing
    assert on.read_share(1) >= 0.85 and on.read_share() >= 0.70
    assert on.dollars() < off.dollars() / 3
    # Every token of the prompt is billed once way or another, and consult N reads all N-1 cached.
    assert sum(on.tokens()) == sum(off.tokens())
    for before, after in itertools.pairwise(on.consults):
        assert (
            after["cache_read_input_tokens"]
            == before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        )
    for caching in (False, True):
        assert runs["implicit", caching].read_share(1) >= 0.85
    title, _, head, rows = cache_section(list(runs.values()))
    assert title and len(rows) == 4 and all(len(row) == len(head) for row in rows)
