"""The storage path and a QUERY_NEXT analysis client across three hosts (network namespaces joined by a bridge):
the detector PC runs ``hidra sender``, the storage host ``hidra receiver``, the analysis host a client of our
library. Sources are removed after confirmation, and watched (``RemovalWatch``) the whole time.

Loss: ``tc netem loss 5% delay 50ms`` where the kernel has netem; otherwise nftables drops 5 % of each host's
outgoing packets and there is NO delay (nftables cannot delay packets; CI kernels without sch_netem get loss only).
CURVE (issue13-contract.md) is switched on for every process once this tree has ``hidra keys``; until then the
same tests run in plain mode, and the test that needs CURVE is skipped.

Needs root (``ip netns add``); skipped with the reason elsewhere.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from chaos.harness import RemovalWatch
from integration.hidra_proc import Hidra, intact, receiver_overrides, tree, wait_until, write_file
from netns.hosts import ADDRESSES, Hosts, cannot_build, netem_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("query_worker.py")
CHUNK = 16 * 1024
REMOVE = "sender.storage.remove_source=after_confirmation"


def curve_available() -> bool:
    """Whether this tree has CURVE (``hidra keys``, issue13-contract.md)."""
    listed = subprocess.run([sys.executable, "-m", "hidra_core", "--help"], capture_output=True, text=True).stdout
    return re.search(r"^\s+keys\s", listed, re.MULTILINE) is not None


CURVE = curve_available()
needs_curve = pytest.mark.skipif(not CURVE, reason="needs CURVE (issue13-contract.md)")


class Worker:
    """A query_worker.py process on the analysis host; its output goes to a file the test reads."""

    def __init__(self, hosts: Hosts, base: Path, name: str, com: int, request: int, keys: list[str]) -> None:
        self.out = base / name
        self.out.mkdir()
        self.log = base / f"{name}.log"
        self._file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*hosts.exec("analysis"), sys.executable, str(WORKER), "--sender", ADDRESSES["detector"],
             "--me", ADDRESSES["analysis"], "--out", str(self.out), "--com-port", str(com),
             "--request-port", str(request), *keys], stdout=self._file, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stored(self) -> dict[str, int]:
        return tree(self.out)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._file.close()


class Site:
    """Receiver on the storage host, sender on the detector PC, workers on the analysis host. Each ``start_*``
    takes extra ``--set`` overrides (or worker arguments) for that process."""

    def __init__(self, hosts: Hosts, base: Path) -> None:
        self.hosts, self.base = hosts, base
        self.source, self.target, self.state = base / "source", base / "target", base / "state"
        for d in (self.source / "run", self.target, self.state):
            d.mkdir(parents=True)
        self.keys = base / "keys"
        self.procs: list[Hidra] = []
        self.workers: list[Worker] = []
        self.receiver: Hidra | None = None
        self.sender: Hidra | None = None
        self.ports = (0, 0)

    def curve(self, role: str) -> list[str]:
        """The ``--set`` overrides that turn CURVE on for ``role`` (none while this tree has no CURVE)."""
        if not CURVE:
            return []
        if not self.keys.exists():
            for name in ("sender", "receiver", "analysis", "intruder"):
                subprocess.run([sys.executable, "-m", "hidra_core", "keys", "generate", name, "--dir", str(self.keys)],
                               check=True, capture_output=True)
        common = ["security.curve=true", f"security.keys_dir={self.keys}"]
        return [*common, "security.allow_clients=[analysis]"] if role == "sender" else common

    def start_receiver(self, *extra: str) -> Hidra:
        storage = ADDRESSES["storage"]
        self.receiver = self._start("receiver", [*receiver_overrides(self.target, f"tcp://{storage}:0",
                                                                     f"tcp://{storage}:0", f"tcp://{storage}:0"),
                                                 *self.curve("receiver"), *extra])
        return self.receiver

    def start_sender(self, *extra: str) -> Hidra:
        assert self.receiver is not None
        data, confirmations, _status = self.receiver.endpoints()
        me = ADDRESSES["detector"]
        self.sender = self._start("sender", [
            f"sender.source.inotify.path={self.source}", f"sender.storage.data={data}",
            f"sender.storage.confirmations={confirmations}", f"sender.ledger.path={self.state / 'ledger.sqlite'}",
            f"sender.clients.com=tcp://{me}:0", f"sender.clients.request=tcp://{me}:0",
            f"sender.clients.whitelist=[{ADDRESSES['analysis']}]", f"sender.chunksize={CHUNK}", REMOVE,
            *self.curve("sender"), *extra])
        m = re.search(r"com tcp://\S+:(\d+), request tcp://\S+:(\d+)", self.sender.text())
        assert m, self.sender.text()
        self.ports = (int(m.group(1)), int(m.group(2)))
        return self.sender

    def _start(self, role: str, overrides: list[str]) -> Hidra:
        host = "storage" if role == "receiver" else "detector"
        proc = Hidra(role, self.base / f"{role}.log", overrides, prefix=self.hosts.exec(host))
        self.procs.append(proc)
        proc.wait_ready(30)
        return proc

    def start_worker(self, name: str, keys: list[str] | None = None) -> Worker:
        """A worker; ``keys``: its arguments (default: authenticated with the ``analysis`` key under CURVE)."""
        if keys is None:
            keys = ["--keys-dir", str(self.keys), "--identity", "analysis"] if CURVE else []
        worker = Worker(self.hosts, self.base, name, *self.ports, keys)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for p in self.procs:
            p.kill()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    why = cannot_build()
    if why is not None:
        pytest.skip(why)
    try:
        hosts = Hosts()
    except Exception as exc:
        pytest.skip(f"cannot build the three hosts: {exc}")
    here = Site(hosts, tmp_path)
    try:
        yield here
    finally:
        here.close()
        hosts.close()


def _files(first: int, count: int) -> dict[str, int]:
    return {f"run/f{i:04d}.raw": 1 + (i * 4099) % 50_000 for i in range(first, first + count)}


def _write(site: Site, files: dict[str, int]) -> None:
    for rel, size in files.items():
        write_file(site.source / rel, size)


def _worker_ready(worker: Worker) -> None:
    wait_until(lambda: "READY" in worker.text() or worker.proc.poll() is not None, 30, "the worker registered")
    assert "READY" in worker.text(), worker.text()


def _delivered_whole(worker: Worker) -> dict[str, int]:
    """What the worker stored; every file must be byte-identical."""
    got = worker.stored()
    assert all(intact(worker.out, rel, size) for rel, size in got.items()), "a client got a corrupt file"
    return got


def _all_stored_and_removed(site: Site, watch: RemovalWatch, expected: dict[str, int]) -> None:
    wait_until(lambda: len(watch.removed) == len(expected), 90, "every file stored and its source removed")
    watch.close()
    watch.check()
    assert tree(site.source) == {}
    assert tree(site.target) == expected
    assert all(intact(site.target, rel, size) for rel, size in expected.items())


def _until_the_client_gets_one(site: Site, watch: RemovalWatch, worker: Worker, files: dict[str, int]) -> dict:
    """Write ``files`` one at a time (each once the previous one is stored) until the QUERY_NEXT client has one
    of them; a client gets only files that come while it has a NEXT open. Returns those written."""
    written: dict[str, int] = {}
    for rel, size in files.items():
        write_file(site.source / rel, size)
        written[rel] = size
        wait_until(lambda: rel in watch.removed, 60, f"{rel} stored")
        if set(_delivered_whole(worker)) & set(files):
            return written
    wait_until(lambda: set(_delivered_whole(worker)) & set(files), 10, "one of the files at the QUERY_NEXT client")
    return written


def test_5_percent_loss_between_the_hosts_loses_nothing(site: Site) -> None:
    """5 % of every host's packets are lost (netem adds 50 ms delay where the kernel has it; nftables, used
    otherwise, cannot delay)."""
    netem = netem_available()
    site.hosts.lossy(5, 50, netem)
    bulk, probe = _files(0, 200), _files(200, 50)
    site.start_receiver()
    site.start_sender()
    worker = site.start_worker("analysis")
    _worker_ready(worker)
    watch = RemovalWatch(site.source, site.target, ["run"], {**bulk, **probe})
    _write(site, bulk)
    wait_until(lambda: len(watch.removed) == len(bulk), 90, "the first 200 files stored")
    probed = _until_the_client_gets_one(site, watch, worker, probe)
    _all_stored_and_removed(site, watch, {**bulk, **probed})


def test_link_cut_for_10_s_mid_transfer_resumes_and_loses_nothing(site: Site) -> None:
    """Confirmations published while the link is down are dropped, as are chunks in the dying connection: the
    files in flight must go out again when the receiver is back, not after their confirmation timeout (made
    longer than the test here, so that nothing else can bring them)."""
    first, during, probe = _files(0, 100), _files(100, 100), _files(200, 50)
    site.start_receiver()
    site.start_sender("sender.storage.confirmation_timeout_s=3600")
    worker = site.start_worker("analysis")
    _worker_ready(worker)
    watch = RemovalWatch(site.source, site.target, ["run"], {**first, **during, **probe})
    _write(site, first)
    wait_until(lambda: len(tree(site.target)) >= 20, 60, "the first files at the target")
    site.hosts.cut("detector", down=True)
    _write(site, during)
    time.sleep(10)  # NOTE: the outage itself, not a wait for something
    site.hosts.cut("detector", down=False)
    wait_until(lambda: len(watch.removed) == len(first) + len(during), 90, "the files from before the cut stored")
    probed = _until_the_client_gets_one(site, watch, worker, probe)
    _all_stored_and_removed(site, watch, {**first, **during, **probed})
    assert site.sender is not None and "is back: sending" in site.sender.text()


@needs_curve
def test_unauthenticated_client_in_the_analysis_namespace_is_refused_and_gets_no_data(site: Site) -> None:
    expected = _files(0, 50)
    site.start_receiver()
    sender = site.start_sender()
    allowed = site.start_worker("analysis")
    _worker_ready(allowed)
    plain = site.start_worker("plain", keys=[])  # no CURVE at all
    unknown = site.start_worker("intruder", keys=["--keys-dir", str(site.keys), "--identity", "intruder"])
    probe = _files(100, 50)
    watch = RemovalWatch(site.source, site.target, ["run"], {**expected, **probe})
    _write(site, expected)
    wait_until(lambda: len(watch.removed) == len(expected), 90, "the files stored")
    probed = _until_the_client_gets_one(site, watch, allowed, probe)
    _all_stored_and_removed(site, watch, {**expected, **probed})
    for intruder in (plain, unknown):
        wait_until(lambda: intruder.proc.poll() is not None, 30, "the intruder's registration to fail")
        assert intruder.proc.returncode == 3 and "REFUSED" in intruder.text(), intruder.text()
        assert intruder.stored() == {}
    assert re.search(rf"WARNING .*{re.escape(ADDRESSES['analysis'])}", sender.text()), "the refusal is logged"
