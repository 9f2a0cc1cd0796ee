"""A Starlette gateway stub with the advisor middleware.

Run: uvicorn examples.starlette_app:app --port 8080

Your real /v1/messages handler goes where ``messages`` is; here it forwards nothing and simply
reuses the demo gateway's scripted model so the example runs offline.
"""

from starlette.applications import Starlette
from starlette.routing import Mount

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.demo import DemoGateway

app = Starlette(routes=[Mount("/", app=DemoGateway())])
app.add_middleware(AdvisorMiddleware, ping_interval=5.0)
