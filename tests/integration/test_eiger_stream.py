"""The Eiger stream end to end: ``hidra-eiger-sim`` (a subprocess playing the DCU) -> ``hidra sender``
(``eiger_stream``) -> ``hidra receiver`` (``hdf5``), with analysis clients; real HTTP, ZeroMQ and HDF5 files read
back with h5py + hdf5plugin and compared with the frames the simulator generated."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import h5py
import hdf5plugin  # noqa: F401  (registers the HDF5 filters)
import numpy as np
import pytest
import zmq

from hidra_eiger.sim.frames import FrameGenerator
from hidra_proc import Hidra, receiver_overrides, scrape, wait_until

pytestmark = pytest.mark.integration

SIZE = (64, 48)  # x, y
SHAPE = (SIZE[1], SIZE[0])


def expected(index: int, channel: int = 0, bits: int = 16) -> np.ndarray:
    return FrameGenerator(SHAPE, f"uint{bits}", seed=0).frame(index, channel)


class Rig:
    """A simulated DCU, a storage receiver with the hdf5 writer and a sender reading the DCU's stream."""

    def __init__(self, base: Path, version: str) -> None:
        self.base = base
        self.target = base / "target"
        self.target.mkdir()
        script = shutil.which("hidra-eiger-sim", path=str(Path(sys.executable).parent))
        assert script, "hidra-eiger-sim is not installed"
        self.sim = subprocess.Popen([script, "--size", f"{SIZE[0]}x{SIZE[1]}", "--api-version", version],
                                    stdout=subprocess.PIPE, text=True)
        info = json.loads(self.sim.stdout.readline())
        self.rest, self.stream, self.version = info["rest"], info["stream"], info["api_version"]
        self.procs: list[Hidra] = []
        self.data = self.confirmations = self.status = "tcp://127.0.0.1:0"
        self.sender: Hidra | None = None
        self.receiver: Hidra | None = None
        self.put("stream", "mode", "enabled")
        self.put("detector", "frame_time", 0.0005)

    def put(self, module: str, param: str, value: Any) -> None:
        req = urllib.request.Request(f"{self.rest}/{module}/api/{self.version}/config/{param}", method="PUT",
                                     data=json.dumps({"value": value}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()

    def command(self, name: str) -> Any:
        req = urllib.request.Request(f"{self.rest}/detector/api/{self.version}/command/{name}", method="PUT")
        raw = urllib.request.urlopen(req, timeout=120).read()
        return json.loads(raw) if raw else None

    def series(self, frames: int) -> int:
        """Arm and trigger a series of ``frames`` images; returns its series id once the DCU sent them."""
        self.put("detector", "nimages", frames)
        series = self.command("arm")["sequence id"]
        self.command("trigger")  # NOTE: returns when the exposures are over, like the DCU
        self.command("disarm")
        return series

    def start_receiver(self, *extra: str) -> Hidra:
        self.receiver = Hidra("receiver", self.base / "receiver.log",
                              [*receiver_overrides(self.target, self.data, self.confirmations, self.status),
                               'receiver.writers=["files", "hdf5"]', *extra])
        self.procs.append(self.receiver)
        self.receiver.wait_ready()
        self.data, self.confirmations, self.status = self.receiver.endpoints()
        return self.receiver

    def start_sender(self, *extra: str) -> Hidra:
        self.sender = Hidra("sender", self.base / "sender.log", [
            "sender.source.type=eiger_stream", f"sender.source.eiger_stream.endpoint={self.stream}",
            f"sender.storage.data={self.data}", f"sender.storage.confirmations={self.confirmations}",
            f"sender.ledger.path={self.base / 'ledger.sqlite'}", "sender.clients.com=tcp://127.0.0.1:0",
            "sender.clients.request=tcp://127.0.0.1:0", "sender.storage.confirmation_timeout_s=5", *extra])
        self.procs.append(self.sender)
        self.sender.wait_ready()
        return self.sender

    def com(self) -> str:
        return re.search(r"com (\S+), request (\S+),", self.sender.text()).group(1, 2)

    def h5(self, series: int, suffix: str = ".h5", timeout_s: float = 60) -> Path:
        path = self.target / f"series_{series}{suffix}"
        wait_until(path.exists, timeout_s, f"{path.name} at its final name")
        return path

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.sim.terminate()
        self.sim.wait(10)
        self.sim.stdout.close()


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, getattr(request, "param", "1.8.0"))
    try:
        yield r
    finally:
        r.close()


def check_file(path: Path, frames: int, channels: int = 1) -> h5py.File:
    f = h5py.File(path, "r")
    data = f["/entry/data/data"]
    assert data.shape == ((frames, *SHAPE) if channels == 1 else (frames, channels, *SHAPE))
    assert data.id.get_num_chunks() == frames * channels  # every frame, none twice
    for i in range(frames):
        for c in range(channels):
            got = data[i] if channels == 1 else data[i, c]
            np.testing.assert_array_equal(got, expected(i, c), err_msg=f"frame {i} channel {c}")
    return f


@pytest.mark.parametrize(("stream_format", "channels"), [("legacy", 1), ("cbor", 1), ("cbor", 2)])
def test_series_of_1000_frames_become_one_hdf5_file_each_with_every_frame_and_the_header(rig, stream_format,
                                                                                          channels):
    rig.put("stream", "format", stream_format)
    rig.put("detector", "compression", "bslz4")
    if channels == 2:
        rig.put("detector", "threshold/2/mode", "enabled")
    rig.start_receiver()
    rig.start_sender()
    first = rig.series(1000)
    second = rig.series(10)  # back to back
    with check_file(rig.h5(first), 1000, channels) as f:
        detector = f["/entry/instrument/detector"]
        assert detector.attrs["series_id"] == first
        keys = ("x_pixels_in_detector", "y_pixels_in_detector") if stream_format == "legacy" else (
            "image_size_x", "image_size_y")  # the V1 config part / the V2 start message, as the DCU names them
        assert (detector.attrs[keys[0]], detector.attrs[keys[1]]) == SIZE
        assert f["/entry/data/data"].attrs["compression"] == "bslz4"
        assert f["/entry"].attrs["frames"] == 1000 * channels and f["/entry"].attrs["aborted"] == 0
    with check_file(rig.h5(second), 10, channels):
        pass
    assert not list(rig.target.glob(".hidra-partial/**/*.h5")), "a temp file was left behind"
    import silx.io

    with silx.io.open(str(rig.h5(first))) as f:  # as a beamline user opens it (silx view, silx.io)
        data = f["/entry/data/data"]
        np.testing.assert_array_equal(data[999] if channels == 1 else data[999, 1], expected(999, channels - 1))


@pytest.mark.parametrize("rig", ["1.6.0"], indirect=True)
def test_v1_raw_and_lz4_frames_are_stored_as_sent_and_read_back_exactly(rig):
    rig.start_receiver()
    rig.start_sender()
    for compression, filtered in (("none", False), ("lz4", True)):
        rig.put("detector", "compression", compression)
        with check_file(rig.h5(rig.series(20)), 20) as f:
            assert f["/entry/data/data"].attrs["compression"] == compression
            assert bool(f["/entry/data/data"]._filters) is filtered


def test_a_series_aborted_without_its_end_is_kept_under_a_name_that_says_so(rig):
    rig.put("detector", "compression", "bslz4")
    rig.start_receiver()
    rig.start_sender()
    rig.put("detector", "nimages", 100_000)
    rig.put("detector", "frame_time", 0.002)
    aborted = rig.command("arm")["sequence id"]
    trigger = threading.Thread(target=rig.command, args=("trigger",), daemon=True)
    trigger.start()
    wait_until(lambda: "storage receiver is up" in rig.sender.text() and any(rig.target.glob(".hidra-partial/**/*")),
               30, "the aborted series' first frames at the receiver")
    rig.command("abort")  # the DCU sends no end message
    trigger.join(30)
    rig.put("detector", "frame_time", 0.0005)
    following = rig.series(5)  # its header ends the aborted series
    path = rig.h5(aborted, ".aborted.h5")
    with h5py.File(path, "r") as f:
        stored = f["/entry/data/data"].id.get_num_chunks()
        assert stored > 0 and f["/entry"].attrs["aborted"] == 1
        for i in range(stored):
            np.testing.assert_array_equal(f["/entry/data/data"][i], expected(i))
    with check_file(rig.h5(following), 5):
        pass


def test_receiver_sigkilled_mid_series_then_restarted_loses_and_duplicates_no_frame(rig):
    rig.put("detector", "compression", "bslz4")
    rig.put("detector", "frame_time", 0.002)
    rig.start_receiver("log_level=DEBUG")  # NOTE: frames are logged (stored ...) at DEBUG only
    rig.start_sender()
    rig.put("detector", "nimages", 1500)
    series = rig.command("arm")["sequence id"]
    trigger = threading.Thread(target=rig.command, args=("trigger",), daemon=True)
    trigger.start()
    log = rig.base / "receiver.log"
    wait_until(lambda: log.read_text().count("stored series_") >= 200, 60, "200 frames stored")
    rig.receiver.proc.send_signal(signal.SIGKILL)
    rig.receiver.proc.wait(10)
    rig.start_receiver("log_level=DEBUG")
    trigger.join(60)
    rig.command("disarm")
    with check_file(rig.h5(series, timeout_s=120), 1500):
        pass
    wait_until(lambda: "storage receiver restarted" in rig.sender.text(), 30, "the sender to see the restart")
    assert " lost" not in rig.sender.text()


def _register(ctx: zmq.Context, com: str, signal_name: str, ports: list[int]) -> None:
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(com)
        req.send_multipart([b"4.4.3", b"test", signal_name.encode(),
                            json.dumps([[f"{socket.getfqdn()}:{port}", 1, ".*"] for port in ports]).encode()])
        assert req.poll(5000) and req.recv_multipart() == [signal_name.encode()]
    finally:
        req.close()


def test_stream_client_and_query_next_workers_get_frames_with_metadata_while_storage_gets_all(rig):
    rig.put("stream", "format", "cbor")
    rig.put("detector", "compression", "bslz4")
    rig.start_receiver()
    rig.start_sender()
    com, request = rig.com()
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    try:
        stream_client = ctx.socket(zmq.PULL)
        workers = [ctx.socket(zmq.PULL) for _ in range(2)]
        asks = ctx.socket(zmq.PUSH)
        socks += [stream_client, *workers, asks]
        for s in socks:
            s.linger = 0
        stream_port = stream_client.bind_to_random_port("tcp://0.0.0.0")
        worker_ids = [f"{socket.getfqdn()}:{w.bind_to_random_port('tcp://0.0.0.0')}".encode() for w in workers]
        _register(ctx, com, "START_STREAM", [stream_port])
        _register(ctx, com, "START_QUERY_NEXT", [int(w.rsplit(b":", 1)[1]) for w in worker_ids])
        asks.connect(request)
        warm = rig.series(3)  # NOTE: clients get what is sent once their connection is up
        rig.h5(warm)
        while stream_client.poll(500):
            stream_client.recv_multipart()
        series = rig.series(40)
        got: list[dict] = []
        while len(got) < 42:  # start, 40 frames, end
            assert stream_client.poll(20_000), f"the stream client got {len(got)} of 42 messages"
            head, payload = stream_client.recv_multipart()
            meta = json.loads(head)
            if meta.get("series") == f"series_{series}":
                got.append(meta)
                if meta["htype"] == "hidra-frame-1.0":
                    frame = meta["metadata"]
                    assert (frame["series_id"], frame["shape"], frame["dtype"], frame["compression"]) == (
                        series, list(SHAPE), "<u2", "bslz4")
                    assert meta["filesize"] == len(payload) and meta["chunk_number"] == 0
        assert [m["metadata"].get("image_id") for m in got[1:-1]] == list(range(40))
        # each query worker asks for one message at a time and gets one sent after its request, none the same
        for worker_id in worker_ids:
            asks.send_multipart([b"NEXT", worker_id])
        again = rig.series(5)
        names = []
        for worker in workers:
            assert worker.poll(20_000), "a QUERY_NEXT worker got nothing"
            meta = json.loads(worker.recv_multipart()[0])
            assert meta["series"] == f"series_{again}" and "metadata" in meta
            names.append(meta["filename"])
        assert len(set(names)) == 2, names
        with check_file(rig.h5(series), 40):
            pass
        check_file(rig.h5(again), 5).close()
    finally:
        for s in socks:
            s.close()
        ctx.term()


def _golden(fmt: str, series_id: int) -> Any:
    """A series as the simulator's ``arm`` makes it, to send its messages from the test's own PUSH socket."""
    from hidra_eiger.sim.detector import _detector_config
    from hidra_eiger.sim.series import Series

    cfg = _detector_config(SIZE, fmt == "cbor").values()
    cfg.update(compression="bslz4", bit_depth_image=16, nimages=10, frame_time=0.002)
    return Series(series_id, 7, fmt, "basic", cfg, "", "", False, ["threshold_1"], FrameGenerator(SHAPE, "uint16", 0))


@contextlib.contextmanager
def _played_dcu(tmp_path: Path) -> Iterator[tuple[zmq.Socket, Path, Hidra, Hidra]]:
    """The test's own PUSH socket playing the DCU, a sender reading it and a receiver with the hdf5 writer."""
    ctx = zmq.Context()
    dcu = ctx.socket(zmq.PUSH)
    dcu.linger = 0
    stream = f"tcp://127.0.0.1:{dcu.bind_to_random_port('tcp://127.0.0.1')}"
    target = tmp_path / "target"
    target.mkdir()
    procs = []
    try:
        receiver = Hidra("receiver", tmp_path / "receiver.log",
                         [*receiver_overrides(target), 'receiver.writers=["hdf5"]'])
        procs.append(receiver)
        receiver.wait_ready()
        data, confirmations, _status = receiver.endpoints()
        sender = Hidra("sender", tmp_path / "sender.log", [
            "sender.source.type=eiger_stream", f"sender.source.eiger_stream.endpoint={stream}",
            f"sender.storage.data={data}", f"sender.storage.confirmations={confirmations}",
            f"sender.ledger.path={tmp_path / 'ledger.sqlite'}", "sender.clients.enabled=false"])
        procs.append(sender)
        sender.wait_ready()
        yield dcu, target, sender, receiver
    finally:
        for proc in procs:
            proc.kill()
        dcu.close()
        ctx.term()


def test_hostile_messages_from_the_dcu_are_counted_and_reported_and_the_stream_goes_on(tmp_path):
    """The test plays the DCU with its own PUSH socket: bad messages between and inside two good series."""
    import cbor2

    from hidra_eiger.sim import stream_v1, stream_v2

    with _played_dcu(tmp_path) as (dcu, target, sender, receiver):
        v1, v2 = _golden("legacy", 1), _golden("cbor", 2)
        image = stream_v1.image_parts(v1, 0)
        bad_encoding = [image[0], json.dumps({**json.loads(image[1]), "encoding": "zstd<"}).encode(), *image[2:]]
        for parts in (
            stream_v1.image_parts(v1, 0),  # a frame before any header (late join)
            [b"\x00\xffnot json"],  # neither JSON nor CBOR
            cbor2.dumps([1, 2, 3]),  # CBOR of the wrong type
            cbor2.dumps({"type": "hologram"}),  # CBOR map of an unknown type
            stream_v1.header_parts(v1),
            bad_encoding,  # an unknown encoding: this frame is dropped
            image[:2],  # a truncated multipart
            *(stream_v1.image_parts(v1, i) for i in range(1, 10)),
            stream_v1.end_parts(v1),
            stream_v2.start_message(v2),
            *(stream_v2.image_message(v2, i) for i in range(10)),
            stream_v2.end_message(v2),
        ):
            dcu.send_multipart(parts if isinstance(parts, list) else [parts])
        first, second = target / "series_1.h5", target / "series_2.h5"
        wait_until(lambda: first.exists() and second.exists(), 60, "both series stored")
        with h5py.File(first, "r") as f:
            held = [i for i in range(10) if f["/entry/data/data"].id.get_chunk_info_by_coord((i, 0, 0)).byte_offset
                    is not None]
            assert held == list(range(1, 10))  # frame 0 was refused (unknown encoding), the rest are there
            for i in held:
                np.testing.assert_array_equal(f["/entry/data/data"][i], expected(i))
        check_file(second, 10).close()
        log = sender.text()
        # each kind of problem is logged once per series, then counted (the totals at the header or the end)
        for words in ("arrived before any header; dropped", "unknown encoding 'zstd<'", "3 malformed problems in all",
                      "truncated dimage-1.0"):
            assert words in log, f"the sender's log does not report {words!r}:\n{log}"
        assert sender.proc.poll() is None and receiver.proc.poll() is None


def test_frames_a_series_skipped_are_counted_per_series_in_metrics(tmp_path):
    """The test plays the DCU: series 1 skips images 2, 6, 7 and 8 (a second client on the DCU's PUSH would take
    them), series 2 is complete; /metrics counts the frames lost by series."""
    from hidra_eiger.sim import stream_v1

    with _played_dcu(tmp_path) as (dcu, target, sender, receiver):
        first, second = _golden("legacy", 1), _golden("legacy", 2)
        for series, images in ((first, (0, 1, 3, 4, 5, 9)), (second, range(10))):
            dcu.send_multipart(stream_v1.header_parts(series))
            for i in images:
                dcu.send_multipart(stream_v1.image_parts(series, i))
            dcu.send_multipart(stream_v1.end_parts(series))
        wait_until(lambda: (target / "series_2.h5").exists(), 60, "both series stored")
        wait_until(lambda: scrape(sender.rest_url()).get('hidra_sender_source_frames_lost_total{series="series_1"}')
                   == 4, 10, "series 1's four lost frames in /metrics")
        assert 'hidra_sender_source_frames_lost_total{series="series_2"}' not in scrape(sender.rest_url())
