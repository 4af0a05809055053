"""`scalekit-bridge tail` shows what lands, as it lands, against a real broker."""

from __future__ import annotations

import asyncio
import io

import pytest

from bridge.config import KafkaSettings
from bridge.dev.samples import sample
from bridge.dev.tail import Tail, follow

pytestmark = pytest.mark.integration


def tail_of(running, kafka_bootstrap: str, **options) -> Tail:
    settings = running.bridge.settings
    return Tail(KafkaSettings(bootstrap_servers=kafka_bootstrap), settings.topic_prefix, settings.deadletter_topic,
                **options)


async def test_tail_prints_each_event_that_lands_after_it_started_even_on_a_new_topic(start_bridge, kafka_bootstrap):
    running = await start_bridge()
    before = sample("role.created") | {"id": "evt_before"}
    assert (await running.deliver(before))[0] == 201

    out = io.StringIO()
    ready = asyncio.Event()
    following = asyncio.create_task(follow(tail_of(running, kafka_bootstrap), out, count=2, following=ready))
    await asyncio.wait_for(ready.wait(), 30)
    assert (await running.deliver(sample("role.created") | {"id": "evt_after"}))[0] == 201
    # The first event of its type: its topic is created now, after tail started.
    created = sample("organization.directory.user_created")
    assert (await running.deliver(created))[0] == 201
    printed = await asyncio.wait_for(following, 30)

    lines = out.getvalue().splitlines()
    assert printed == 2 and len(lines) == 2
    assert "evt_before" not in out.getvalue()
    role, user = sorted(lines, key=lambda line: "directory" in line)
    assert " role.created " in role and "id=evt_after" in role
    assert f"key={created['organization_id']}" in user and f"id={created['id']}" in user
    assert user.startswith(created["occurred_at"])
    assert created["data"]["id"] not in out.getvalue()  # the data (personal data) only with --show-data


async def test_tail_from_the_beginning_filters_by_type_and_names_dead_letters(start_bridge, kafka_bootstrap):
    running = await start_bridge()
    assert (await running.deliver(sample("role.created")))[0] == 201
    assert (await running.deliver(sample("organization.directory.user_created")))[0] == 201
    assert (await running.deliver(b'{"id": "evt_x"}'))[0] == 201  # dead-lettered: no type

    out = io.StringIO()
    tail = tail_of(running, kafka_bootstrap, type_pattern="organization.directory.*", from_beginning=True)
    assert await asyncio.wait_for(follow(tail, out, count=2), 30) == 2

    lines = sorted(out.getvalue().splitlines())
    assert any(" organization.directory.user_created " in line for line in lines)
    assert any("DEAD LETTER" in line and "reason=envelope has no string 'type'" in line for line in lines)
    assert not any("role.created" in line for line in lines)


async def test_tail_shows_an_excerpt_of_the_data_only_when_asked(start_bridge, kafka_bootstrap):
    running = await start_bridge()
    created = sample("organization.directory.user_created")
    assert (await running.deliver(created))[0] == 201

    shown, hidden = io.StringIO(), io.StringIO()
    for out, show in ((shown, True), (hidden, False)):
        tail = tail_of(running, kafka_bootstrap, from_beginning=True, show_data=show)
        assert await asyncio.wait_for(follow(tail, out, count=1), 30) == 1

    assert created["data"]["id"] in shown.getvalue()
    assert created["data"]["id"] not in hidden.getvalue()
    assert hidden.getvalue().rstrip().endswith(f"id={created['id']}")
