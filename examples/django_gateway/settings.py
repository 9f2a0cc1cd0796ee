"""Settings of the example Django gateway: the minimum to serve one async view over ASGI."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_gateway.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []  # add yours (auth, CSRF for the rest of the site...): legs pass through them
DATABASES: dict[str, Any] = {}
USE_TZ = True
# Claude Code sends long conversations; Django's default cap on request.body is 2.5 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024

DEMO_DELAY = float(os.environ.get("DEMO_DELAY", "0.04"))
"""Seconds between streamed text pieces of the scripted demo model."""
