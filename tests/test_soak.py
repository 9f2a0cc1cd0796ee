"""The soak (``tests/support/soak.py``): every answer well-formed, nothing left in flight. CI runs it at a
small size; ``SOAK_TOTAL=20000 pytest -m soak`` runs it at full length (64 at a time)."""

from __future__ import annotations

import os

import pytest

from .support.soak import cases, main

TOTAL = int(os.environ.get("SOAK_TOTAL", "200"))


@pytest.mark.soak
def test_the_soak_answers_every_request_well_formed() -> None:
    concurrency = 16 if TOTAL <= 1000 else 64
    report = main(["--total", str(TOTAL), "--concurrency", str(concurrency), "--max-seconds", "900"])
    assert report is not None
    mix = cases(TOTAL)
    faults = sum(case != "ok" and not case.startswith("disconnect") for case, _ in mix)
    disconnects = sum(case.startswith("disconnect") for case, _ in mix)
    assert report.bad == []
    assert report.unfinished == 0
    assert report.disconnected == disconnects
    assert report.answered == TOTAL - disconnects
    assert report.well_formed == report.answered
    assert report.kinds["ok"] == TOTAL - disconnects - faults and sum(report.kinds.values()) == report.answered
    assert report.in_flight == 0, "legs left running in the host"
    assert report.quiet and len(report.quiet) == len(report.direct)


def test_the_case_mix() -> None:
    mix = cases(20_000)
    assert len(mix) == 20_000
    assert sum(case == "ok" for case, _ in mix) == 17_000
    assert sum(case.startswith("disconnect") for case, _ in mix) == 1_000
    assert 9_500 < sum(streaming for _, streaming in mix) < 10_500
