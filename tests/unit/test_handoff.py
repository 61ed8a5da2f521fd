"""The source-to-router hand-off: bounded in bytes of held payload, events passed as objects, drops recorded."""
from __future__ import annotations

import threading

import pytest
import zmq

from hidra_core import FileEvent
from hidra_core.sender import handoff as handoff_module
from hidra_core.sender.handoff import Handoff
from hidra_core.testing import wait_until


def _frame(i: int, size: int) -> FileEvent:
    return FileEvent("tcp://dcu:9999", "", f"f{i}", kind="frame", payload=memoryview(bytearray(size)))


@pytest.fixture
def pair(zmq_context: zmq.Context):
    made = []

    def make(max_bytes: int, when_full: str = "block") -> tuple[Handoff, zmq.Socket, threading.Event]:
        stop = threading.Event()
        handoff = Handoff(zmq_context, max_bytes, when_full, stop)
        bell = handoff.connect(zmq_context)
        made.append((handoff, bell, stop))
        return handoff, bell, stop

    yield make
    for handoff, bell, stop in made:
        stop.set()
        bell.close()
        handoff.close()


def test_events_pass_as_the_same_objects_without_copying_the_payload(pair):
    handoff, bell, _stop = pair(1 << 20)
    event = _frame(0, 1000)
    handoff.put([event], bell)
    (taken,) = list(handoff.take(10))
    assert taken is event and taken.payload is event.payload
    assert handoff.held == 1000


def test_the_source_waits_at_the_byte_bound_until_the_router_releases(pair):
    handoff, bell, _stop = pair(2500)
    done = threading.Event()

    def source() -> None:
        handoff.put([_frame(i, 1000) for i in range(4)], bell)
        done.set()

    thread = threading.Thread(target=source)
    thread.start()
    wait_until(lambda: len(handoff) == 2, 10, what="two frames handed over")
    assert not done.wait(0.2) and len(handoff) == 2 and handoff.held == 2000  # the third waits: 3000 > 2500
    taken = list(handoff.take(10))
    assert len(taken) == 2 and not done.is_set()  # taking is not releasing: the frames are still held
    handoff.release(2000)
    wait_until(done.is_set, 10, what="the rest handed over after the release")
    thread.join()
    assert handoff.held == 2000 and handoff.dropped == 0


def test_drop_mode_drops_new_frames_and_keeps_what_the_ledger_needs(pair):
    handoff, bell, _stop = pair(2500, "drop")
    handoff.put([_frame(i, 1000) for i in range(5)], bell)  # never blocks
    assert [e.filename for e in handoff.take(10)] == ["f0", "f1"]
    dropped = handoff.take_dropped()
    assert [e.filename for e in dropped] == ["f2", "f3", "f4"] and handoff.dropped == 3
    assert all(e.payload is None and e.kind == "frame" for e in dropped)  # the payload is let go at once


def test_a_frame_larger_than_the_whole_bound_goes_when_nothing_else_is_held(pair):
    handoff, bell, _stop = pair(100)
    handoff.put([_frame(0, 1000)], bell)
    assert [e.filename for e in handoff.take(1)] == ["f0"] and handoff.dropped == 0


def test_file_events_are_bounded_in_number_not_bytes(pair, monkeypatch):
    monkeypatch.setattr(handoff_module, "MAX_WAITING", 3)
    handoff, bell, _stop = pair(1)
    done = threading.Event()

    def source() -> None:
        handoff.put([FileEvent("/src", "", f"f{i}") for i in range(5)], bell)
        done.set()

    thread = threading.Thread(target=source)
    thread.start()
    wait_until(lambda: len(handoff) == 3, 10, what="three file events handed over")
    assert not done.wait(0.2) and handoff.held == 0
    assert len(list(handoff.take(10))) == 3
    wait_until(done.is_set, 10, what="the rest after the router took some")
    thread.join()
    assert len(list(handoff.take(10))) == 2
