"""Instructions per request, counted by valgrind's callgrind: the side-by-side rows without the noise.

CPU time on a shared machine moves by half again within minutes (docs/performance.md, *Noise*);
an instruction count does not: the same code, inputs and interpreter give the same count however
loaded the machine is. It is not time (a cache miss costs more than an add), so the timed rows stay
the figures the targets are judged by; this table is for before/after of code changes.

The parent runs one child interpreter under ``valgrind --tool=callgrind``. The child builds the
rows' scenarios (``bench.inproc``, the same as the timed rows), warms each side up, then runs its
requests between two markers: ``os.getppid()``, whose C function ``os_getppid`` callgrind is told
to zero the counters before, and ``os.getpgrp()``, before which it writes them out. Each segment's
count, divided by its requests, is one side of one row. The child prints the segments' names in
order; the parent pairs them with the numbered dumps.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

__all__ = ["Count", "Instructions", "measure_instructions"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Count:
    key: str
    label: str
    n: int
    base: float
    """Instructions per request, host alone."""
    through: float
    reference: float | None = None
    """Instructions of one ``from_json`` of the body, for the large rows."""

    @property
    def added(self) -> float:
        return self.through - self.base


@dataclass
class Instructions:
    status: str
    """``measured``, or why not (no valgrind; an interpreter without the marker symbols)."""
    rows: list[Count] = field(default_factory=list)
    relay_deltas: int = 0

    def row(self, key: str) -> Count | None:
        return next((r for r in self.rows if r.key == key), None)

    @property
    def per_event(self) -> float | None:
        """Added instructions per relayed event: the long final leg's row minus the short one's."""
        relay, short = self.row("consult_relay"), self.row("consult_stream")
        if relay is None or short is None or self.relay_deltas <= 1:
            return None
        return (relay.added - short.added) / (self.relay_deltas - 1)


def measure_instructions(*, n: int, relay_deltas: int, large: int, n_large: int) -> Instructions:
    """Run the child under callgrind and read its segments (a minute at full size)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return Instructions("valgrind not installed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            valgrind,
            "--tool=callgrind",
            "--zero-before=os_getppid",
            "--dump-before=os_getpgrp",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.instructions",
            json.dumps({"n": n, "relay_deltas": relay_deltas, "large": large, "n_large": n_large}),
        ]
        # A fixed hash seed: dict and set layouts, and so the count, are the same run to run.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the callgrind child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        segments: list[list[str | int]] = json.loads(proc.stdout.strip().splitlines()[-1])
        counts = []
        for number in range(1, len(segments) + 1):
            dump = Path(f"{out}.{number}")
            if not dump.exists():
                return Instructions("callgrind found no os_getppid/os_getpgrp symbols in this interpreter")
            match = re.search(r"^summary: (\d+)$", dump.read_text(), re.MULTILINE)
            if match is None:
                raise RuntimeError(f"no summary line in {dump.name}")
            counts.append(int(match.group(1)))
    per_request: dict[tuple[str, str], float] = {}
    labels: dict[str, tuple[str, int]] = {}
    for (key, side, label, requests), total in zip(segments, counts, strict=True):
        assert isinstance(key, str) and isinstance(side, str) and isinstance(label, str) and isinstance(requests, int)
        per_request[(key, side)] = total / requests
        labels[key] = (label, requests)
    rows = [
        Count(
            key,
            label,
            requests,
            per_request[(key, "base")],
            per_request[(key, "through")],
            per_request.get((key, "reference")),
        )
        for key, (label, requests) in labels.items()
    ]
    return Instructions("measured", rows, relay_deltas)


ROWS = ("consult_stream", "consult_json", "consult_relay", "offered_stream", "consult_large", "pass_small")
"""The timed in-process rows (``bench.run.inproc_scenarios``) that are counted too."""


async def _child(n: int, relay_deltas: int, large: int, n_large: int) -> list[list[str | int]]:
    from .run import FULL, inproc_scenarios

    # The timed rows' own scenarios, at the sizes given; the rows not counted are built small.
    sizes = dataclasses.replace(
        FULL,
        large=large,
        huge=large,
        relay_deltas=relay_deltas,
        n_consult=n,
        n_relay=max(1, n // 4),
        n_large=n_large,
        n_huge=1,
        n_pass_small=n,
    )
    scenarios = [scenario for scenario in await inproc_scenarios(sizes, {}) if scenario.key in ROWS]
    segments: list[list[str | int]] = []

    async def segment(key: str, side: str, label: str, requests: int, call: Callable[[], Awaitable[object]]) -> None:
        gc.collect()  # every segment starts from the same collector state
        await call()  # warm: first-call paths and caches out of the count
        os.getppid()  # callgrind zeroes its counters here
        for _ in range(requests):
            await call()
        os.getpgrp()  # and writes them out here
        segments.append([key, side, label, requests])

    for scenario in scenarios:
        for side, call in (("base", scenario.base), ("through", scenario.through)):
            await segment(scenario.key, side, scenario.label, scenario.n, call)
        reference = scenario.reference
        if reference is not None:

            async def parse(reference: Callable[[], object] = reference) -> None:
                reference()

            await segment(scenario.key, "reference", scenario.label, scenario.n, parse)
    return segments


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    print(json.dumps(anyio.run(lambda: _child(**options), backend="asyncio")))
