"""An aiohttp service of your own that also takes Scalekit's deliveries into Kafka.

docs/embedding.md's "Inside your aiohttp service", as written; `test_service.py` runs it against a real broker.
Configuration comes from the same environment variables as `scalekit-bridge serve`.
"""

import os

from aiohttp import web

from bridge.app import setup_webhook
from bridge.config import Settings


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "from your own service"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)  # your routes, as before
    # POST /webhooks/scalekit (BRIDGE_WEBHOOK_PATH): 201 only once Kafka has the record. The Kafka
    # producer starts with the app, and is flushed and closed when the app stops.
    webhook = setup_webhook(app, Settings.from_env())
    app.router.add_get("/scalekit/readyz", webhook.readyz)  # 200 while Kafka answers; 503 otherwise
    app.router.add_get("/scalekit/metrics", webhook.metrics)  # the bridge's Prometheus metrics
    return app


if __name__ == "__main__":
    web.run_app(make_app(), port=int(os.environ.get("PORT", "8000")))
