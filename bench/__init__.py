"""Benchmarks of ``AdvisorMiddleware`` against the host alone and LiteLLM (``python -m bench``; see
``bench/run.py`` and docs/performance.md)."""
