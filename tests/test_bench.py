"""The benchmark still runs (quick mode) and writes only where asked. No timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.run import BEGIN, DEFAULT_DOC, END, LITELLM_CONSULT_MS, main, write_doc

ROWS = {
    "consult_stream",
    "consult_json",
    "consult_stream_large",
    "passthrough_small",
    "passthrough_large",
    "passthrough_large_parsed",
}


def _doc_state() -> tuple[int, int] | None:
    if not DEFAULT_DOC.exists():
        return None
    stat = DEFAULT_DOC.stat()
    return stat.st_mtime_ns, stat.st_size


def test_quick_bench_measures_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    before = _doc_state()
    report = main(["--quick"])

    assert report.quick
    assert {row.key for row in report.rows} == ROWS
    for row in report.rows:
        assert row.n > 0
        for value in (row.base_cpu_us, row.base_wall_us, row.through_cpu_us, row.through_wall_us):
            assert value > 0, row
        assert math.isfinite(row.added_cpu_us) and math.isfinite(row.added_wall_us)
    assert report.row("consult_stream").litellm_ms == LITELLM_CONSULT_MS
    assert report.row("consult_json").litellm_ms == LITELLM_CONSULT_MS
    assert report.row("passthrough_small").litellm_ms is None
    assert report.startup.import_ms > 0
    assert report.startup.rss_after_mb > 0
    assert report.machine["CPU"] and report.machine["Python"]

    out = capsys.readouterr().out
    assert "Added CPU µs" in out
    assert "reference figure, measured separately on the same machine kind" in out
    for row in report.rows:
        assert row.label in out
    assert _doc_state() == before, "the bench wrote docs without --write"


def test_write_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "performance.md"
    write_doc(path, "| first |\n")
    text = path.read_text()
    assert text.startswith("# Performance") and "| first |" in text

    path.write_text(text.replace(BEGIN, "Hand-written method.\n\n" + BEGIN) + "\nHand-written analysis.\n")
    write_doc(path, "| second |\n")
    text = path.read_text()
    assert "| second |" in text and "| first |" not in text
    assert "Hand-written method." in text and "Hand-written analysis." in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
