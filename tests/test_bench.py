"""The benchmark still runs (quick mode, without LiteLLM as in CI) and writes only where asked.
No timing assertions."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

import bench.net
import bench.run
from bench.run import BEGIN, DEFAULT_DOC, END, main, write_doc

ROWS = {
    "consult_stream",
    "consult_json",
    "consult_relay",
    "consult_large",
    "pass_small",
    "pass_large",
    "http_stream",
    "http_json",
}


def _doc_state() -> tuple[int, int] | None:
    if not DEFAULT_DOC.exists():
        return None
    stat = DEFAULT_DOC.stat()
    return stat.st_mtime_ns, stat.st_size


def test_quick_bench_measures_every_row(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.net, "litellm_installed", lambda: False)  # CI has no LiteLLM
    before = _doc_state()
    report = main(["--quick"])

    assert {row.key for row in report["rows"]} == ROWS
    for row in report["rows"]:
        assert row.n > 0
        for value in (row.alone_cpu, row.alone_wall, row.through_cpu, row.through_wall):
            assert value > 0, row
        assert all(math.isfinite(value) for value in bench.run.added(row))
    referenced = {row.key for row in report["rows"] if row.reference_us is not None}
    assert referenced == {"consult_large", "pass_large"}
    assert all(row.reference_us > 0 for row in report["rows"] if row.key in referenced)
    assert report["litellm"] == {"error": "not installed"}
    relay = report["relay"]
    assert relay["alone_events_s"] > 0 and relay["through_events_s"] > 0
    assert relay["alone_ttfb_us"] > 0 and relay["through_ttfb_us"] > 0
    clients = bench.run.QUICK.clients
    assert [(side["completed"], side["failed"]) for side in report["concurrency"]] == [(clients, 0)] * 2
    bare, fastapi = report["startup"]["bare"], report["startup"]["fastapi"]
    assert bare is not None and bare[0] > 0 and bare[1] > 0
    assert fastapi is not None and fastapi[0] > 0
    assert report["startup"]["litellm"] is None
    out = capsys.readouterr().out
    for heading in ("### Side by side", "### LiteLLM", "### Streaming relay", "concurrent", "### Start-up"):
        assert heading in out
    assert "quick mode" in out and "Python" in out
    assert "LiteLLM: not installed." in out and "Added CPU per relayed event" in out
    for row in report["rows"]:
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


def test_startup_is_timed_with_bytecode_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under PYTHONDONTWRITEBYTECODE a fresh interpreter would compile an editable checkout's
    # sources on every timed import.
    # The module's first import (no log yet) takes 1.5 s: it must be the untimed one.
    log = tmp_path / "imports.log"
    (tmp_path / "probe_module.py").write_text(
        "import os, time\n"
        f"if not os.path.exists({str(log)!r}):\n    time.sleep(1.5)\n"
        f"with open({str(log)!r}, 'a') as f:\n    f.write('x')\n"
    )
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    import_ms, _ = bench.net.measure_startup("probe_module", 1)

    assert log.read_text() == "xx", "one untimed run that writes the bytecode, then the timed one"
    assert list((tmp_path / "__pycache__").glob("probe_module.*.pyc")), "the probe ran without writing bytecode"
    assert 0 < import_ms < 700, import_ms  # loose: 1.5 s if the first were timed


def test_compare_times_another_checkout_in_its_own_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = Path(bench.run.__file__).resolve().parent.parent / "advisor_middleware"
    shutil.copytree(package, tmp_path / "advisor_middleware")

    main(["--quick", "--compare", str(tmp_path), "--rounds", "2"])

    out = capsys.readouterr().out
    assert f"Old: {tmp_path}." in out and f"New: {package.parent}." in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "Old" not in line]
    assert len(rows) == len(bench.run.COMPARED) + 3
    assert all(key in out for key in bench.run.COMPARED)
