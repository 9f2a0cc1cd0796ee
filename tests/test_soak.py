"""``bench/soak.py`` at a tiny size, as CI runs it: every answer well-formed, nothing left in flight.
The full-size figures (20,000 requests, 64 at a time) are in docs/reliability.md."""

from __future__ import annotations

from bench.soak import cases, main


def test_a_small_soak_answers_every_request_well_formed() -> None:
    report = main(["--total", "200", "--concurrency", "16", "--max-seconds", "60"])
    assert report is not None
    assert report.bad == []
    assert report.unfinished == 0
    assert report.disconnected == 10  # 5 %
    assert report.answered == 190
    assert report.well_formed == report.answered  # 100 %
    assert sum(report.kinds.values()) == 190 and report.kinds["ok"] == 170  # 10 % injected faults
    assert report.in_flight == 0, "legs left running in the host"
    assert len(report.quiet) == 20 and len(report.direct) == 20


def test_the_case_mix() -> None:
    mix = cases(20_000)
    assert len(mix) == 20_000
    assert sum(case == "ok" for case, _ in mix) == 17_000
    assert sum(case.startswith("disconnect") for case, _ in mix) == 1_000
    assert 9_500 < sum(streaming for _, streaming in mix) < 10_500
