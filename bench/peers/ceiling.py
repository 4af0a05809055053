"""`ceiling`: the least an aiohttp + aiokafka forwarder can do, as the benchmark's upper bound.

Reads the body, verifies nothing, parses nothing, and answers 201 after `send_and_wait` of the raw body
with the bridge's producer guarantees (acks=all, idempotent, linger 5 ms), on uvloop like the bridge, so
both sides run on the same stack. Run by bench/openloop.py:
`python bench/peers/ceiling.py` with KAFKA_BOOTSTRAP_SERVERS, PORT and TOPIC in the environment.
"""

from __future__ import annotations

import asyncio
import os
import signal

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaProducer


async def main() -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    topic = os.environ["TOPIC"]

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        await producer.send_and_wait(topic, body)
        return web.json_response({"received": True}, status=201)

    app = web.Application(client_max_size=262_144)
    app.router.add_post("/webhooks/scalekit", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(os.environ["PORT"]), backlog=1024).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await producer.stop()


if __name__ == "__main__":
    uvloop.run(main())
