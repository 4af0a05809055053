"""`seed-guide`: the handler Scalekit's own guide shows, as a Python team would write it.

Flask under gunicorn (2 sync workers), scalekit-sdk-python's `verify_webhook_payload`, then
confluent-kafka `produce` + `flush()` before answering, with the bridge's producer guarantees
(acks=all, idempotent, linger 5 ms). Run by bench/openloop.py:
`gunicorn -w 2 -b 127.0.0.1:$PORT bench.peers.seed_guide:app` with KAFKA_BOOTSTRAP_SERVERS,
SCALEKIT_WEBHOOK_SECRET and TOPIC_PREFIX in the environment.
"""

from __future__ import annotations

import json
import os

from confluent_kafka import Producer
from flask import Flask, request
from scalekit import ScalekitClient

app = Flask(__name__)
producer = Producer({
    "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
})
# The client's constructor logs in over the network; verify_webhook_payload uses no instance state.
scalekit = ScalekitClient.__new__(ScalekitClient)
secret = os.environ["SCALEKIT_WEBHOOK_SECRET"]
prefix = os.environ.get("TOPIC_PREFIX", "scalekit.")


@app.post("/webhooks/scalekit")
def webhook() -> tuple[dict[str, object], int]:
    body = request.get_data()
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        valid = scalekit.verify_webhook_payload(secret, headers, body)
    except Exception:  # the SDK raises on some bad signatures instead of returning False
        valid = False
    if not valid:
        return {"error": "invalid signature"}, 401
    event = json.loads(body)
    producer.produce(prefix + event["type"], body, key=event.get("organization_id"))
    producer.flush()
    return {"received": True}, 201

