"""Benchmarks of ``AdvisorMiddleware`` against the host alone and LiteLLM: ``python -m bench``."""

import os
import sys

PACKAGE_PATH = "BENCH_PACKAGE_PATH"  # set to DIR by ``--compare DIR``: its children import DIR's package

if os.environ.get(PACKAGE_PATH):
    # Only the package comes from DIR: its tests/ (the scripted model) must stay this checkout's.
    sys.path.insert(0, os.environ[PACKAGE_PATH])
    import advisor_middleware  # noqa: F401

    sys.path.remove(os.environ[PACKAGE_PATH])
