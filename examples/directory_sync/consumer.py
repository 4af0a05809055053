"""Directory-sync consumer: the bridge's directory topics → a SQLite table of users and groups.

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 DIRECTORY_SYNC_DB=directory.db \\
        python -m examples.directory_sync.consumer

One consumer group; it subscribes by pattern to every `<prefix>organization.directory*`
topic, so directory event types Scalekit adds later arrive too (and are skipped, not fatal).
Records are decoded with the CloudEvents SDK's Kafka binding (binary or structured mode) and
applied by `DirectoryStore`, which dedupes on the CloudEvent id. Offsets are committed only
after the batch is in SQLite: a crash replays events, and replays change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections import Counter
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from examples.directory_sync.store import DirectoryStore

log = logging.getLogger("directory_sync")


def topic_pattern(prefix: str) -> str:
    """Every directory topic under the bridge's topic prefix (`scalekit.` by default)."""
    return "^" + re.escape(prefix) + r"organization\.directory.*"


class DirectorySync:
    def __init__(
        self,
        store: DirectoryStore,
        *,
        bootstrap_servers: str,
        topic_prefix: str = "scalekit.",
        group_id: str = "directory-sync",
    ) -> None:
        self.store = store
        self.outcomes: Counter[str] = Counter()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,  # commit only what SQLite already has
            auto_offset_reset="earliest",
            metadata_max_age_ms=5_000,  # notice new directory topics within seconds
        )
        self._consumer.subscribe(pattern=topic_pattern(topic_prefix))
        self._format = JSONFormat()

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
                for records in batches.values():
                    self._apply(records)
                if batches:
                    await self._consumer.commit()
        finally:
            await self._consumer.stop()

    def _apply(self, records: Iterable[ConsumerRecord]) -> None:
        for record in records:
            if record.value is None:
                self.outcomes["ignored"] += 1  # an event without data says nothing about the directory
                continue
            message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
            event = ce_kafka.from_kafka(message, self._format)
            outcome = self.store.apply(event)
            self.outcomes[outcome] += 1
            log.info("%s %s %s", outcome, event.get_type(), event.get_id())


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = DirectoryStore(os.environ.get("DIRECTORY_SYNC_DB", "directory.db"))
    sync = DirectorySync(
        store,
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        topic_prefix=os.environ.get("BRIDGE_TOPIC_PREFIX", "scalekit."),
        group_id=os.environ.get("DIRECTORY_SYNC_GROUP", "directory-sync"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sync.run(stop)
    finally:
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
