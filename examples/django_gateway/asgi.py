"""ASGI entry point of the example Django gateway, with the advisor tool.

Run from the repository root:

    uvicorn examples.django_gateway.asgi:application --port 8080
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_gateway.settings")
django_app = get_asgi_application()  # first: it runs django.setup()

from advisor_middleware import AdvisorMiddleware  # noqa: E402

application = AdvisorMiddleware(django_app, ping_interval=5.0)
