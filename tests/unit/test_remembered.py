"""The window of event ids a release wrote: what it holds, for how long, and what bounds it."""

from __future__ import annotations

from bridge.core import Source
from bridge.remembered import RememberedIds

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
T0 = 1_800_000_000_000  # epoch ms


def test_an_id_written_in_the_window_is_held_with_who_wrote_it_and_no_other_id_is():
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_1", T0, Source.WEBHOOK)
    remembered.add("evt_2", T0 + 1, Source.BACKFILL)

    assert remembered.holds("evt_1") == Source.WEBHOOK
    assert remembered.holds("evt_2") == Source.BACKFILL
    assert remembered.holds("evt_3") is None
    assert len(remembered) == 2


def test_the_same_id_twice_is_one_id():
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_1", T0, Source.WEBHOOK)
    remembered.add("evt_1", T0 + 5, Source.WEBHOOK)

    assert len(remembered) == 1


def test_an_id_read_back_across_a_slice_boundary_is_still_one_id():
    """A replica remembers its own id at once and reads its receipt back ~100 ms later, stamped by the broker:
    when an hour's slice (or a cap's) ends between the two, the id is still counted once."""
    boundary = T0 - T0 % HOUR_MS + HOUR_MS
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_1", boundary - 30, Source.WEBHOOK)
    remembered.add("evt_1", boundary + 70, Source.WEBHOOK)

    assert len(remembered) == 1
    capped = RememberedIds(DAY_MS, max_ids=48)  # a slice holds two ids: the third begins the next
    capped.add("evt_1", T0, Source.WEBHOOK)
    capped.add("evt_2", T0 + 1, Source.WEBHOOK)
    capped.add("evt_1", T0 + 100, Source.WEBHOOK)

    assert len(capped) == 2


def test_an_id_is_forgotten_once_its_whole_slice_has_left_the_window():
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_old", T0, Source.WEBHOOK)

    remembered.forget(T0 + DAY_MS)  # still inside: the window is a whole day
    assert remembered.holds("evt_old") == Source.WEBHOOK
    remembered.forget(T0 + DAY_MS + HOUR_MS + 1)  # a slice (an hour of a day's window) past it
    assert remembered.holds("evt_old") is None
    assert len(remembered) == 0


def test_a_receipt_read_late_is_held_for_its_window_or_longer_never_shorter():
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_new", T0 + 5 * HOUR_MS, Source.WEBHOOK)
    remembered.add("evt_late", T0 + HOUR_MS, Source.REPLAY)

    remembered.forget(T0 + HOUR_MS + DAY_MS)  # the end of its own window
    assert remembered.holds("evt_late") == Source.REPLAY
    remembered.forget(T0 + 6 * HOUR_MS + DAY_MS + 1)  # the newer slice it joined has left too
    assert remembered.holds("evt_late") is None
    assert remembered.holds("evt_new") is None


def test_a_receipt_older_than_the_window_is_not_kept():
    remembered = RememberedIds(DAY_MS, max_ids=1000)
    remembered.add("evt_now", T0 + 2 * DAY_MS, Source.WEBHOOK)
    remembered.add("evt_ancient", T0, Source.WEBHOOK)

    assert remembered.holds("evt_ancient") is None
    assert len(remembered) == 1


def test_past_max_ids_the_oldest_go_first_and_the_reach_says_the_window_is_shorter():
    remembered = RememberedIds(DAY_MS, max_ids=100)
    for hour in range(10):
        for n in range(20):
            remembered.add(f"evt_{hour}_{n}", T0 + hour * HOUR_MS, Source.WEBHOOK)
    now = T0 + 9 * HOUR_MS

    assert len(remembered) <= 100
    assert remembered.holds("evt_0_0") is None
    assert remembered.holds("evt_9_19") == Source.WEBHOOK
    assert remembered.reach_ms(now) == 4 * HOUR_MS  # the ids of hours 5 to 9 kept (100), the oldest 4 h old
    assert RememberedIds(DAY_MS, max_ids=100).reach_ms(now) == DAY_MS


def test_at_a_rate_past_the_cap_the_ids_just_written_are_always_held():
    """A thousand ids a second against a cap of 2,400: the oldest go, a retry of a recent one is still stopped."""
    remembered = RememberedIds(DAY_MS, max_ids=2400)
    for n in range(20_000):
        remembered.add(f"evt_{n}", T0 + n, Source.WEBHOOK)

    assert 2300 <= len(remembered) <= 2400
    assert all(remembered.holds(f"evt_{n}") == Source.WEBHOOK for n in range(20_000 - 2300, 20_000))
    assert remembered.holds("evt_0") is None
    assert 2300 <= remembered.reach_ms(T0 + 20_000) <= 2400  # a millisecond per id
