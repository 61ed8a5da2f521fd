"""The sender's storage-link bookkeeping: which confirmations complete which file."""
from __future__ import annotations

from hidra_core import FileEvent, FileStat
from hidra_core.config import StorageTarget
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
