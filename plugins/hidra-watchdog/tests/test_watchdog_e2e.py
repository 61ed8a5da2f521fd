"""Both sources end to end: a real ``hidra receiver`` and ``hidra sender`` (``source.type: polling`` or
``watchdog``) on loopback; a file is stored byte-identical, and a new version written in place after it was
stored reaches the target too."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from integration.hidra_proc import Hidra, receiver_overrides

from hidra_core.testing import wait_until

pytestmark = pytest.mark.integration

OPTIONS = {"polling": ["sender.source.polling.settle_s=0.5", "sender.source.polling.interval_s=0.1",
                       "sender.source.polling.full_scan_s=1"],
           "watchdog": []}


@pytest.fixture(params=sorted(OPTIONS))
def sender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    kind = request.param
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    receiver = Hidra("receiver", tmp_path / "receiver.log", receiver_overrides(target))
    procs = [receiver]
    try:
        receiver.wait_ready()
        data, confirmations, _status = receiver.endpoints()
        procs.append(Hidra("sender", tmp_path / "sender.log", [
            f"sender.source.type={kind}", f"sender.source.{kind}.path={source}", *OPTIONS[kind],
            f"sender.storage.data={data}", f"sender.storage.confirmations={confirmations}",
            f"sender.ledger.path={tmp_path / 'ledger.sqlite'}", "sender.clients.com=tcp://127.0.0.1:0",
            "sender.clients.request=tcp://127.0.0.1:0"]))
        procs[-1].wait_ready()
        yield source, target
    finally:
        for proc in procs:
            proc.kill()


def _stored(target: Path, name: str) -> bytes | None:
    try:
        return (target / name).read_bytes()
    except FileNotFoundError:
        return None


def test_a_file_rewritten_after_it_was_stored_is_stored_again_in_its_new_version(sender: tuple[Path, Path]) -> None:
    source, target = sender
    (source / "run1").mkdir()
    (source / "run1" / "img.raw").write_bytes(b"first version " * 1000)
    wait_until(lambda: _stored(target, "run1/img.raw") == b"first version " * 1000, 60, what="the first version")
    with open(source / "run1" / "img.raw", "r+b") as f:  # in place, same size: only size/mtime/ctime tell
        f.write(b"SECOND")
    new = (source / "run1" / "img.raw").read_bytes()
    wait_until(lambda: _stored(target, "run1/img.raw") == new, 60, what="the second version")
    assert _stored(target, "run1/img.raw.~1~") == b"first version " * 1000  # the earlier copy kept as a backup
