"""In-process benchmarks of ``AdvisorMiddleware`` (``python -m bench``; see ``bench/run.py``)."""
