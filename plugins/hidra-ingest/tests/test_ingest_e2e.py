"""Ingest end to end: producer processes (``hidra_core.ingest.Ingest``) -> ``hidra sender`` (``zmq_ingest``) ->
``hidra receiver`` (``files``), every file read back from the target and compared."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import zmq
import zmq.auth

from integration.hidra_proc import Hidra, receiver_overrides, tree, wait_until
from ingest_support import content, listening, name_of, producer, size_of

pytestmark = pytest.mark.integration


class Rig:
    def __init__(self, base: Path, receiver_extra: list[str] | None = None) -> None:
        self.base = base
        self.target = base / "target"
        self.target.mkdir()
        self.procs: list[Hidra] = []
        self.producers: list[subprocess.Popen[str]] = []
        self.receiver = self._start("receiver", [*receiver_overrides(self.target), *(receiver_extra or [])])
        data, confirmations, _status = self.receiver.endpoints()
        self.sender: Hidra | None = None
        self.storage = [f"sender.storage.data={data}", f"sender.storage.confirmations={confirmations}"]

    def _start(self, role: str, overrides: list[str]) -> Hidra:
        proc = Hidra(role, self.base / f"{role}.log", overrides)
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def start_sender(self, *extra: str) -> str:
        """Start the sender; the endpoint its ingest source listens on."""
        self.sender = self._start("sender", [
            "sender.source.type=zmq_ingest", "sender.source.zmq_ingest.endpoint=tcp://127.0.0.1:0", *self.storage,
            f"sender.ledger.path={self.base / 'ledger.sqlite'}", "sender.clients.com=tcp://127.0.0.1:0",
            "sender.clients.request=tcp://127.0.0.1:0", *extra])
        return listening(self.sender.text())

    def produce(self, endpoint: str, *args: object) -> subprocess.Popen[str]:
        proc = producer(endpoint, *args)
        self.producers.append(proc)
        return proc

    def stored(self, prefix: str, count: int, size: int) -> list[str]:
        """Names of the first ``count`` files of a producer that are missing or differ in the target."""
        bad = []
        for i in range(count):
            name = name_of(prefix, i)
            path = self.target / name
            if not path.is_file() or path.read_bytes() != content(name, size_of(i, size)):
                bad.append(name)
        return bad

    def close(self) -> None:
        for proc in self.producers:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for hidra in self.procs:
            hidra.signal(signal.SIGCONT)
            hidra.kill()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    try:
        yield made
    finally:
        made.close()


def _output(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_thousand_files_from_four_producer_processes_are_stored_byte_identical(rig: Rig) -> None:
    endpoint = rig.start_sender()
    producers = [rig.produce(endpoint, "files", f"daq{n}", 250, 4096) for n in range(4)]
    assert [_output(p).split()[:2] for p in producers] == [["done", "250"]] * 4
    wait_until(lambda: len(tree(rig.target)) == 1000, 120, "1,000 files in the target")
    assert [rig.stored(f"daq{n}", 250, 4096) for n in range(4)] == [[]] * 4


def test_producer_killed_mid_file_leaves_nothing_partial_and_the_others_are_stored(rig: Rig) -> None:
    endpoint = rig.start_sender("log_level=DEBUG")
    victim = rig.produce(endpoint, "hang", "victim")
    others = [rig.produce(endpoint, "files", f"daq{n}", 60, 20_000) for n in range(3)]
    assert victim.stdout is not None and victim.stdout.readline().strip() == "mid-file"
    assert rig.sender is not None
    wait_until(lambda: "'victim/partial.bin' of producer victim started" in rig.sender.text(), 30,
               "the sender to have the partial file")
    victim.send_signal(signal.SIGKILL)
    wait_until(lambda: "discarded the partial file 'victim/partial.bin'" in rig.sender.text(), 30,
               "the partial file to be discarded")
    assert [_output(p).split()[:2] for p in others] == [["done", "60"]] * 3
    wait_until(lambda: len(tree(rig.target)) == 181, 60, "the others' files and victim/before.bin")
    assert [rig.stored(f"daq{n}", 60, 20_000) for n in range(3)] == [[]] * 3
    assert sorted(p.name for p in (rig.target / "victim").iterdir()) == ["before.bin"]


def test_stopped_receiver_blocks_the_producers_and_everything_arrives_after_it_resumes(rig: Rig) -> None:
    endpoint = rig.start_sender("sender.hold.max_bytes=2097152")
    rig.receiver.signal(signal.SIGSTOP)
    # NOTE: 100 MiB cannot fit in the hold (2 MiB) and the ZeroMQ and TCP buffers between: this one must block
    patient = rig.produce(endpoint, "files", "patient", 400, 256 * 1024)
    hasty = rig.produce(endpoint, "files", "hasty", 400, 256 * 1024, 2)
    blocked = _output(hasty).split()
    assert blocked[0] == "blocked" and "within 2.0 s" in " ".join(blocked), blocked
    assert patient.poll() is None, "a producer finished 100 MiB while storage was stopped"
    rig.receiver.signal(signal.SIGCONT)
    assert _output(patient).split()[:2] == ["done", "400"]
    acknowledged = int(blocked[1])
    wait_until(lambda: not rig.stored("patient", 400, 256 * 1024) and not rig.stored("hasty", acknowledged, 256 * 1024),
               120, "every file of the patient producer and every acknowledged one of the hasty one")


def test_with_curve_on_only_a_producer_with_an_allowed_key_gets_its_files_stored(tmp_path: Path) -> None:
    from hidra_core import ClientKeys, Ingest, IngestError

    keys = tmp_path / "keys"
    for name in ("sender", "receiver", "daq", "stranger"):
        subprocess.run([sys.executable, "-m", "hidra_core", "keys", "generate", name, "--dir", str(keys)], check=True,
                       capture_output=True, timeout=60)
    curve = ["security.curve=true", f"security.keys_dir={keys}"]
    rig = Rig(tmp_path, curve)
    try:
        endpoint = rig.start_sender(*curve, "security.allow_producers=[daq]")
        assert rig.sender is not None and "(CURVE)" in rig.sender.text()
        sender = rig.sender
        context = zmq.Context()
        try:
            stranger = Ingest(endpoint, producer="stranger", timeout_s=2, context=context,
                              keys=ClientKeys.from_dir(str(keys), "stranger", "sender"))
            with pytest.raises(IngestError):
                stranger.send_file("stranger/x.bin", b"not allowed", wait=True)
            with pytest.raises(IngestError):  # still unacknowledged: it never got through
                stranger.close()
            key = zmq.auth.load_certificate(str(keys / "stranger.key"))[0].decode()
            wait_until(lambda: f"refused peer with key {key}" in sender.text(), 20, "the refusal")
            daq = Ingest(endpoint, producer="daq", timeout_s=20, context=context,
                         keys=ClientKeys.from_dir(str(keys), "daq", "sender"))
            daq.send_file("daq/a.bin", b"allowed", wait=True)
            daq.close()
        finally:
            context.destroy(linger=0)
        wait_until(lambda: tree(rig.target) == {"daq/a.bin": 7}, 20, "the allowed producer's file")
    finally:
        rig.close()
