"""Benchmarks of ``AdvisorMiddleware`` against the host alone and LiteLLM (``python -m bench``; see
``bench/run.py`` and docs/performance.md)."""

import os
import sys

# ``python -m bench --compare DIR`` runs its children with this set: they import DIR's package.
if os.environ.get("BENCH_PACKAGE_PATH"):
    sys.path.insert(0, os.environ["BENCH_PACKAGE_PATH"])
