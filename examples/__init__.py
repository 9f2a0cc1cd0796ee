"""Runnable examples (run from the repository root, e.g. ``uvicorn examples.fastapi_app:app``)."""
