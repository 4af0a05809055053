"""Records are keyed to the partition Kafka's own clients choose, whatever remembers the choice."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from bridge.kafka.producer import _KeyPartitioner


def test_a_keyed_record_goes_where_the_default_partitioner_sends_it_every_time():
    default, remembering = DefaultPartitioner(), _KeyPartitioner()
    keys = [f"org_{n}".encode() for n in range(300)] + [b"", b"\xff" * 40, "環境".encode()]

    for count in (1, 3, 7, 12, 50):
        partitions = list(range(count))
        for key in keys:
            for _ in range(2):  # chosen, then remembered
                assert remembering(key, partitions, partitions) == default(key, partitions, partitions)


def test_a_record_without_a_key_goes_to_an_available_partition():
    assert _KeyPartitioner()(None, [0, 1, 2], [2]) == 2
