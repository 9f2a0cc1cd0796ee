"""``import advisor_middleware`` stays light: optional routers load their libraries on use."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("name", "module", "loaded_after"),
    [
        # HTTPRouter is loaded on first use, so the in-process default does not pay httpx's import.
        ("HTTPRouter", "httpx", True),
        # LiteLLMRouter never imports litellm: the caller's router object brings it.
        ("LiteLLMRouter", "litellm", False),
    ],
)
def test_the_package_loads_a_router_library_only_on_use(name: str, module: str, loaded_after: bool) -> None:
    code = (
        "import sys, advisor_middleware\n"
        f"assert {module!r} not in sys.modules, 'imported at package import'\n"
        f"from advisor_middleware import {name}\n"
        f"from advisor_middleware.routers import {name} as again\n"
        f"assert {name} is again\n"
        f"assert ({module!r} in sys.modules) is {loaded_after}, 'after import of {name}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
