"""The sender's storage-link bookkeeping: which confirmations complete which file."""
from __future__ import annotations

import collections
import time

from hidra_core import FileEvent, FileStat
from hidra_core.config import StorageTarget
from hidra_core.protocol.confirmation import HEARTBEAT_TOPIC
from hidra_core.sender.lane import member_for
from hidra_core.sender.outgoing import Checksums, Outgoing
from hidra_core.sender.storage_link import StorageLink

TOPIC = b"sender_1"


def _outgoing(name: str, chunks: int) -> Outgoing:
    out = Outgoing(FileEvent("/src", "", name), FileStat(chunks * 10, 1, 1), 10, {})
    sums = Checksums(chunks)
    out.pending.extend(sums.add(b"x" * 10) for _ in range(chunks))
    while not out.done:
        out.next_message()
    return out


def _legacy(name: str, chunk: int) -> list[bytes]:
    return [TOPIC, name.encode(), str(chunk).encode()]


def test_legacy_chunk_confirmations_before_the_last_chunk_went_out_still_count() -> None:
    """A 4.x receiver confirms each chunk as it is written; some arrive before the sender has sent the last."""
    link = StorageLink(StorageTarget(accept_legacy_confirmations=True))
    for chunk in (0, 1):  # confirmed while chunk 2 was still being read and sent
        assert link.on_message(_legacy("a.dat", chunk)) == ([], [])
    attempts, confirmed = link.sent(_outgoing("a.dat", 3))
    assert (attempts, confirmed) == (1, None)
    resend, done = link.on_message(_legacy("a.dat", 2))
    assert resend == [] and [f.event.filename for f in done] == ["a.dat"]
    assert link.in_flight == {}


def test_a_file_whose_every_chunk_was_confirmed_early_is_confirmed_when_sent() -> None:
    link = StorageLink(StorageTarget(accept_legacy_confirmations=True))
    for chunk in range(3):
        link.on_message(_legacy("b.dat", chunk))
    attempts, confirmed = link.sent(_outgoing("b.dat", 3))
    assert attempts == 1 and confirmed is not None and confirmed.event.filename == "b.dat"
    assert link.in_flight == {}


def test_confirmations_of_an_earlier_send_of_the_same_content_carry_over_to_the_resend() -> None:
    link = StorageLink(StorageTarget(accept_legacy_confirmations=True))
    link.sent(_outgoing("c.dat", 2))
    link.on_message(_legacy("c.dat", 0))  # then the file is sent again (e.g. a receiver restart)
    assert link.sent(_outgoing("c.dat", 2)) == (2, None)
    assert [f.event.filename for f in link.on_message(_legacy("c.dat", 1))[1]] == ["c.dat"]


def test_early_legacy_confirmations_never_complete_a_file_without_accept_legacy() -> None:
    link = StorageLink(StorageTarget())
    for chunk in range(2):
        link.on_message(_legacy("d.dat", chunk))
    assert link.sent(_outgoing("d.dat", 2)) == (1, None)
    assert "d.dat" in link.in_flight


def _group(members: int = 3) -> StorageLink:
    return StorageLink(StorageTarget(data=[f"tcp://h{i}:1" for i in range(members)],
                                     confirmations=[f"tcp://h{i}:2" for i in range(members)]))


def _beacon(link: StorageLink, member: int, instance: bytes = b"one") -> list:
    return link.on_message([HEARTBEAT_TOPIC, instance], member)[0]


def test_a_group_member_that_goes_quiet_has_its_unconfirmed_files_sent_to_the_others(monkeypatch) -> None:
    link = _group()
    for member in range(3):
        _beacon(link, member)
    assert link.poll(time.monotonic())[0] == [0, 1, 2]
    link.sent(_outgoing("to1.dat", 1), member=1)
    link.sent(_outgoing("to2.dat", 1), member=2)
    later = time.monotonic() + 4  # member 1 sends no beacon for longer than the timeout, the others do
    for member in (0, 2):
        monkeypatch.setattr(time, "monotonic", lambda: later)
        _beacon(link, member)
    live, resend = link.poll(later)
    assert live == [0, 2]
    assert [e.filename for e in resend] == ["to1.dat"]
    assert list(link.in_flight) == ["to2.dat"]


def test_a_lone_receiver_that_goes_quiet_keeps_its_files_in_flight() -> None:
    """Its confirmations may still come; the files wait for it (or their timeout), as before groups."""
    link = _group(1)
    _beacon(link, 0)
    link.poll(time.monotonic())
    link.sent(_outgoing("a.dat", 1))
    live, resend = link.poll(time.monotonic() + 4)
    assert (live, resend) == ([], [])
    assert list(link.in_flight) == ["a.dat"]


def _quiet_then_back(link: StorageLink, monkeypatch, instance: bytes = b"one") -> tuple[list, list]:
    """The receiver's beacon stops for longer than the timeout (a cut link), then comes again."""
    gone = time.monotonic() + 4
    assert link.poll(gone) == ([], [])
    monkeypatch.setattr(time, "monotonic", lambda: gone + 1)
    restarted = _beacon(link, 0, instance)
    return restarted, link.poll(gone + 1)[1]


def test_a_lone_receiver_back_after_a_link_cut_gets_its_unconfirmed_files_again(monkeypatch) -> None:
    """Confirmations it published while unreachable are dropped (PUB), as are chunks in the dying connection:
    its files go out again when its beacon returns, not only after their confirmation timeout."""
    link = _group(1)
    _beacon(link, 0)
    link.poll(time.monotonic())
    link.sent(_outgoing("a.dat", 1))
    restarted, resend = _quiet_then_back(link, monkeypatch)
    assert restarted == [] and [e.filename for e in resend] == ["a.dat"]
    assert link.in_flight == {}  # out of the books until sent again


def test_a_receiver_restarted_during_a_link_cut_gets_its_files_again_once(monkeypatch) -> None:
    link = _group(1)
    _beacon(link, 0)
    link.poll(time.monotonic())
    link.sent(_outgoing("a.dat", 1))
    restarted, resend = _quiet_then_back(link, monkeypatch, b"two")
    assert [e.filename for e in restarted] == ["a.dat"] and resend == []


def test_a_file_whose_sending_spanned_a_cut_link_goes_out_again_at_once(monkeypatch) -> None:
    """Its first chunks went into the connection that broke, the rest to the receiver back again (which drops
    the file as out of order): it is sent again at once, not after its confirmation timeout."""
    link = _group(1)
    _beacon(link, 0)
    link.poll(time.monotonic())
    spanning = _outgoing("spanning.dat", 3)  # its reading began before the cut
    _quiet_then_back(link, monkeypatch)
    after = _outgoing("after.dat", 3)
    assert link.sent(spanning) == (1, None) and link.sent(after) == (1, None)
    resend, _overdue = link.expire(time.monotonic())
    assert [e.filename for e in resend] == ["spanning.dat"]
    assert list(link.in_flight) == ["after.dat"]


def test_a_restarted_member_gets_only_its_own_files_again() -> None:
    link = _group(2)
    _beacon(link, 0)
    _beacon(link, 1)
    link.sent(_outgoing("to0.dat", 1), member=0)
    link.sent(_outgoing("to1.dat", 1), member=1)
    assert [e.filename for e in _beacon(link, 1, b"two")] == ["to1.dat"]


def test_rendezvous_hashing_moves_only_the_lost_members_files() -> None:
    members = [f"tcp://h{i}:1" for i in range(3)]
    keys = [f"d/{i}.dat" for i in range(3000)]
    before = {key: member_for(key, members, [0, 1, 2]) for key in keys}
    assert min(collections.Counter(before.values()).values()) > 800  # spread over all three
    after = {key: member_for(key, members, [0, 2]) for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == 1}
    assert all(after[key] in (0, 2) for key in keys)
    assert member_for("x", members, []) == member_for("x", members, [0, 1, 2])  # none up: its usual member
