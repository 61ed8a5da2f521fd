"""The data buffer's store on its own (databuffer.md §12): bounds, whole-pulse eviction, config history, gaps,
``None`` values, and readers waiting for pulses that have not come yet."""
from __future__ import annotations

import struct
import threading
from typing import Any

from hidra_databuffer._decode import ChannelConfig
from hidra_databuffer.store import Event, Pulse, Store

from hidra_core.testing import wait_until

F8 = ChannelConfig("float64", (1,), "little", "none")
I4x3 = ChannelConfig("int32", (3,), "little", "none")


def pulse(pid: int, **values: Any) -> Pulse:
    """A pulse whose channels hold ``values`` (float, or None for "no value"); global time = pid seconds."""
    blob, events = b"", {}
    for name, value in values.items():
        if value is None:
            events[name] = None
            continue
        events[name] = Event(F8, len(blob), 8)
        blob += struct.pack("<d", value)
    return Pulse(pid, 1_700_000_000 + pid, 123, blob, events)


def ids(store: Store, name: str = "a", start: int = 0, end: int = 10**9) -> list[int]:
    return [pulse.pulse_id for pulse, _ in store.select([name], start, end)[0].hits]


def test_max_pulses_evicts_whole_pulses_oldest_first_and_counts_them() -> None:
    store = Store(max_pulses=5, max_bytes=1 << 30)
    store.append(pulse(n, a=n, b=-n) for n in range(12))
    assert ids(store, "a") == ids(store, "b") == [7, 8, 9, 10, 11]
    status = store.status()
    assert (status["oldest_pulse_id"], status["newest_pulse_id"], status["pulses"]) == (7, 11, 5)
    assert status["evictions"] == 7 and status["evictions_by_bound"]["pulses"] == 7


def test_max_bytes_evicts_oldest_pulses_until_under_the_bound() -> None:
    one = pulse(0, a=0.0).nbytes
    store = Store(max_pulses=1000, max_bytes=3 * one)
    store.append([pulse(n, a=float(n)) for n in range(10)])
    assert ids(store) == [7, 8, 9]
    assert store.status()["bytes"] <= 3 * one
    assert store.evictions["bytes"] == 7


def test_max_age_evicts_pulses_stored_too_long_ago() -> None:
    now = [100.0]
    store = Store(max_pulses=1000, max_bytes=1 << 30, max_age_s=10, clock=lambda: now[0])
    store.append([pulse(1, a=1.0), pulse(2, a=2.0)])
    now[0] = 105.0
    store.append([pulse(3, a=3.0)])
    now[0] = 112.0  # 1 and 2 are 12 s old, 3 is 7 s old: evicted by a reader too, with no new pulse
    assert ids(store) == [3]
    assert store.evictions["age"] == 2


def test_gaps_are_counted_and_never_filled() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append(pulse(n, a=float(n)) for n in [*range(0, 20, 4), *range(70, 80)])
    assert ids(store) == [0, 4, 8, 12, 16, *range(70, 80)]
    assert store.mapping(0, 100)[:2] == [(0, 1_700_000_000, 123), (4, 1_700_000_004, 123)]
    status = store.status()
    assert (status["gaps"], status["missing_pulses"]) == (5, 3 * 4 + 53)


def test_none_value_is_no_event_but_the_pulse_is_stored() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append([pulse(1, a=1.0, b=None), pulse(2, a=None, b=2.0), pulse(3, a=3.0, b=3.0)])
    assert ids(store, "a") == [1, 3] and ids(store, "b") == [2, 3]
    assert [p for p, _, _ in store.mapping(0, 10)] == [1, 2, 3]


def test_each_event_keeps_the_config_of_its_pulse_and_a_range_lists_every_config() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append(pulse(n, a=float(n)) for n in range(5))
    changed = [Pulse(n, n, 0, b"\0" * 12, {"a": Event(I4x3, 0, 12)}) for n in range(5, 10)]
    store.append(changed)
    whole = store.select(["a"], 0, 9)[0]
    assert whole.configs == [F8, I4x3]
    assert [event.config for _, event in whole.hits] == [F8] * 5 + [I4x3] * 5
    assert store.select(["a"], 6, 9)[0].configs == [I4x3]
    assert store.channels()["a"] == [(0, F8), (5, I4x3)]


def test_range_without_events_of_a_known_channel_gives_its_config_and_no_data() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append([Pulse(10, 10, 0, b"\0" * 8, {"a": Event(F8, 0, 8), "b": None}, {"b": I4x3})])
    for start, end in [(0, 5), (10, 10), (11, 20)]:
        a, b = store.select(["a", "b"], start, end)
        assert (b.known, b.configs, b.hits) == (True, [I4x3], []), "a channel that only ever had None is known"
        assert (a.known, a.configs, len(a.hits)) == (True, [F8], int(start == 10))
    unknown = store.select(["nope"], 0, 100)[0]
    assert (unknown.known, unknown.configs, unknown.hits) == (False, [], [])


def test_pulse_sent_again_replaces_the_stored_copy_and_late_pulses_sort_in() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append([pulse(1, a=1.0), pulse(3, a=3.0)])
    store.append([pulse(2, a=2.0), pulse(3, a=33.0)])
    hits = store.select(["a"], 0, 10)[0].hits
    assert [pulse.pulse_id for pulse, _ in hits] == [1, 2, 3]
    assert struct.unpack("<d", hits[2][0].blob[:8])[0] == 33.0
    assert (store.replaced, store.out_of_order) == (1, 1)


def test_pulse_ids_that_start_again_replace_the_old_run_instead_of_being_evicted_first() -> None:
    store = Store(max_pulses=5, max_bytes=1 << 30)
    store.append(pulse(n, a=float(n)) for n in range(1000, 1010))
    store.append(pulse(n, a=float(n)) for n in range(0, 8))  # a simulator restarted at pulse id 0
    assert ids(store) == [3, 4, 5, 6, 7]
    assert store.status()["restarts"] == 1 and store.evictions["restart"] == 5


def test_reader_waiting_for_a_future_pulse_wakes_when_it_is_stored() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    store.append([pulse(1, a=1.0)])
    result: list[bool] = []
    reader = threading.Thread(target=lambda: result.append(store.wait_for(5, timeout=60)))
    reader.start()
    wait_until(lambda: store.waiting == 1, 10, what="the reader to wait")
    store.append([pulse(3, a=3.0)])
    assert store.waiting == 1, "woke up before the pulse it waits for"
    store.append([pulse(6, a=6.0)])
    reader.join(30)
    assert result == [True] and store.waiting == 0


def test_reader_waiting_for_a_pulse_that_never_comes_gives_up_at_its_deadline() -> None:
    store = Store(max_pulses=1000, max_bytes=1 << 30)
    assert store.wait_for(0, timeout=0) is False  # empty store
    store.append([pulse(1, a=1.0)])
    assert store.wait_for(1, timeout=0) is True
    assert store.wait_for(2, timeout=0.05) is False
