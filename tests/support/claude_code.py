"""Our Claude Code harness: install the CLI from npm into a cache folder, run headless turns
against a server, and check what Claude Code itself reported.

The CLI (~380 MB) is installed once per version into
``${XDG_CACHE_HOME:-~/.cache}/asgi-advisor/claude-code/<version>`` and reused; delete that folder
to get the space back. Each turn runs ``claude -p PROMPT --output-format stream-json --verbose``
with its own ``HOME`` and working directory, telemetry, auto-update and non-essential traffic off,
and the advisor turned on (``CLAUDE_CODE_ENABLE_EXPERIMENTAL_ADVISOR_TOOL=1`` plus ``--advisor``).
Claude Code talks only to the server it is given.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PACKAGE",
    "PINNED",
    "Turn",
    "cache_root",
    "claude_env",
    "install",
    "newest_version",
    "run_turn",
    "transcript_problems",
]

PACKAGE = "@anthropic-ai/claude-code"
PINNED = "2.1.332"
"""The Claude Code version the suite (and the README) pins; the newest one is tested as well."""

KNOWN_RESULTS = ("advisor_result", "advisor_redacted_result", "advisor_tool_result_error")
SERVER_TOOL_ID = re.compile(r"srvtoolu_[A-Za-z0-9_]+")


class InstallError(RuntimeError):
    """npm could not install (or run) the requested Claude Code version."""


def cache_root() -> Path:
    """Where every installed Claude Code version lives, one folder each."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "asgi-advisor" / "claude-code"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not on PATH: the Claude Code tests need npm (and node) to install the CLI")
    return npm


def newest_version() -> str:
    """The newest Claude Code version the npm registry serves right now."""
    done = subprocess.run(
        [_npm(), "view", PACKAGE, "version"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise InstallError(f"npm view {PACKAGE} version failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def _reported_version(binary: Path) -> str:
    if not binary.exists():
        return ""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return ""
    return done.stdout.strip()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path``: two test runs never install into one folder at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(version: str) -> Path:
    """The ``claude`` binary of ``version`` in the cache folder, installed there first if missing."""
    prefix = cache_root() / version
    binary = prefix / "node_modules" / ".bin" / "claude"
    with _locked(cache_root() / f".{version}.lock"):
        if _reported_version(binary).startswith(f"{version} "):
            return binary
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir(parents=True)
        argv = [_npm(), "install", "--prefix", str(prefix), f"{PACKAGE}@{version}", "--no-audit", "--no-fund"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise InstallError(f"npm install {PACKAGE}@{version} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        reported = _reported_version(binary)
        if not reported.startswith(f"{version} "):
            raise InstallError(f"{binary} --version printed {reported!r}, not {version}")
    return binary


def claude_env(base_url: str, home: Path, api_key: str = "sk-test") -> dict[str, str]:
    """The environment of a headless turn: this machine's, without any Anthropic or Claude
    settings of its own, pointed at ``base_url``, with the advisor turned on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=api_key,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_ENABLE_EXPERIMENTAL_ADVISOR_TOOL="1",
    )
    return env


@dataclass
class Turn:
    """One headless turn: its exit code, Claude Code's stream-json events and its stderr."""

    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    """What a logging host received during this turn (filled in by tests that log)."""

    def result(self) -> dict[str, Any]:
        """The closing ``result`` event (empty if Claude Code printed none)."""
        return next((e for e in self.events if e.get("type") == "result"), {})

    def blocks(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Content blocks (of this ``kind``) of the turn's assistant and user messages, in order."""
        return [
            b
            for e in self.events
            if e.get("type") in ("assistant", "user") and isinstance(e["message"]["content"], list)
            for b in e["message"]["content"]
            if kind is None or b.get("type") == kind
        ]

    def advisor_calls(self) -> list[dict[str, Any]]:
        return [b for b in self.blocks("server_tool_use") if b.get("name") == "advisor"]

    def report(self) -> str:
        return f"rc={self.returncode} result={str(self.result().get('result'))[:300]!r} stderr={self.stderr[-1500:]}"


def run_turn(
    binary: Path, prompt: str, *, env: dict[str, str], cwd: Path, extra: tuple[str, ...] = (), timeout: float = 300
) -> Turn:
    """One headless turn with ``--model sonnet --advisor opus``; Bash may run ``echo`` only."""
    argv = [str(binary), "-p", prompt, "--model", "sonnet", "--advisor", "opus", "--allowedTools", "Bash(echo:*)"]
    argv += ["--output-format", "stream-json", "--verbose", *extra]
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as gone:
        stderr = gone.stderr.decode(errors="replace") if isinstance(gone.stderr, bytes) else str(gone.stderr or "")
        return Turn(-1, [], f"timed out after {timeout} s\n{stderr}")
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return Turn(done.returncode, events, done.stderr)


def transcript_problems(turn: Turn, advisor_model_id: str | None = None) -> list[str]:
    """What is wrong with a consulting turn as Claude Code reported it (nothing, if all is well):
    the turn ended cleanly; every advisor call has a ``srvtoolu_`` id and empty input and is
    answered by exactly one ``advisor_tool_result`` holding one known result object; and, given
    ``advisor_model_id``, ``modelUsage`` prices the advisor under that model."""
    problems = []
    outcome = turn.result()
    if turn.returncode != 0 or outcome.get("is_error") is not False:
        problems.append(f"the turn failed: {turn.report()}")
    calls = turn.advisor_calls()
    results = turn.blocks("advisor_tool_result")
    if not calls:
        problems.append(f"no advisor call: {[b.get('type') for b in turn.blocks()]}")
    if any(not SERVER_TOOL_ID.fullmatch(str(c.get("id"))) or c.get("input") != {} for c in calls):
        problems.append(f"an advisor call without a srvtoolu_ id or with input: {calls}")
    if sorted(str(r.get("tool_use_id")) for r in results) != sorted(str(c.get("id")) for c in calls):
        problems.append(f"advisor calls and results do not pair one to one: {calls} {results}")
    if any(not isinstance(r.get("content"), dict) or r["content"].get("type") not in KNOWN_RESULTS for r in results):
        problems.append(f"an advisor result is not one object of a known type: {results}")
    usage = outcome.get("modelUsage") or {}
    if advisor_model_id is not None and advisor_model_id not in usage:
        problems.append(f"modelUsage does not price the advisor under {advisor_model_id}: {list(usage)}")
    return problems
