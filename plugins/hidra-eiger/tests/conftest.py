"""The simulator as a real subprocess (its console script), talked to over real HTTP and a real ZeroMQ PULL."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq

SIZE = (64, 48)  # x, y: small frames keep every series fast; content is the same diffraction-like pattern


def _script() -> str:
    found = shutil.which("hidra-eiger-sim", path=str(Path(sys.executable).parent)) or shutil.which("hidra-eiger-sim")
    assert found, "the hidra-eiger-sim console script is not installed"
    return found


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    rest: str
    stream: str
    version: str

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.rest + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.call(method, path, body)
        assert status == 200, (method, path, status, out)
        return out

    def put(self, module: str, param: str, value: Any) -> list[str]:
        return self.ok("PUT", f"/{module}/api/{self.version}/config/{param}", {"value": value})

    def command(self, name: str) -> Any:
        return self.ok("PUT", f"/detector/api/{self.version}/command/{name}")


@pytest.fixture(scope="module")
def start_sim() -> Iterator[Callable[..., Sim]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Sim:
        proc = subprocess.Popen([_script(), "--size", f"{SIZE[0]}x{SIZE[1]}", *args], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # NOTE: printed once both sockets listen; EOF if it died
        assert line, f"hidra-eiger-sim exited with {proc.wait(timeout=10)} before it listened"
        info = json.loads(line)
        return Sim(proc, info["rest"], info["stream"], info["api_version"])

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def pull() -> Iterator[Callable[[Sim], zmq.Socket]]:
    """A PULL socket per simulator, kept for the module.

    # NOTE: one client for the whole module: a PUSH may still hold the pipe of a client closed a moment ago and
    # hand it the next message, which would then be lost (eiger.md §6, one client per stream).
    """
    ctx = zmq.Context()
    socks: dict[str, zmq.Socket] = {}

    def connect(sim: Sim) -> zmq.Socket:
        if sim.stream in socks:
            return socks[sim.stream]
        sock = ctx.socket(zmq.PULL)
        sock.linger = 0
        sock.rcvhwm = 10_000
        sock.rcvtimeo = 20_000  # NOTE: a missing message fails the test instead of hanging it
        sock.connect(sim.stream)
        socks[sim.stream] = sock
        return sock

    yield connect
    for sock in socks.values():
        sock.close()
    ctx.term()


def hdf5_decode(chunk: bytes, shape: tuple[int, int], dtype: str, filter_: Any) -> np.ndarray:
    """Decompress an HDF5-filter-framed chunk with hdf5plugin's filter, exactly as an HDF5 reader would.

    # NOTE: an independent decoder: hdf5plugin's own bitshuffle/LZ4 builds, not the simulator's encoder
    """
    with h5py.File(io.BytesIO(), "w") as f:
        dset = f.create_dataset("d", shape=(1, *shape), dtype=dtype, chunks=(1, *shape), **filter_)
        dset.id.write_direct_chunk((0, 0, 0), chunk)
        return dset[0]


# --- golden messages and payload decoding for the eiger_stream source tests ---------------------------------------

SHAPE = (SIZE[1], SIZE[0])  # numpy order (y, x)


def golden_series(fmt: str = "legacy", detail: str = "basic", compression: str = "bslz4", bits: int = 16,
                  bs_header: bool = False, channels: int = 1, series_id: int = 1, header_appendix: str = "",
                  image_appendix: str = "") -> Any:
    """A simulator ``Series`` as ``arm`` makes it, to build messages with the simulator's own encoders."""
    from hidra_eiger.sim.detector import _detector_config
    from hidra_eiger.sim.frames import FrameGenerator
    from hidra_eiger.sim.series import Series

    cfg = _detector_config(SIZE, fmt == "cbor").values()
    cfg.update(compression=compression, bit_depth_image=bits, nimages=8, frame_time=0.002)
    names = ["threshold_1", "threshold_2"][:channels]
    return Series(series_id, 0xC0FFEE, fmt, detail, cfg, header_appendix, image_appendix, bs_header, names,
                  FrameGenerator(SHAPE, f"uint{bits}", 0))


def expected_frame(index: int, bits: int = 16, channel: int = 0) -> np.ndarray:
    """The frame the simulator generates for image ``index`` (seed 0, the test frame size)."""
    from hidra_eiger.sim.frames import FrameGenerator

    return FrameGenerator(SHAPE, f"uint{bits}", seed=0).frame(index, channel)


def decode_payload(payload: Any, meta: dict[str, Any]) -> np.ndarray:
    """A frame event's payload as pixels, from its metadata alone (as the HDF5 writer and clients must)."""
    import lz4.block

    shape, dtype = tuple(meta["shape"]), meta["dtype"]
    blob = bytes(payload)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if meta["compression"] == "none":
        return np.frombuffer(blob, dtype=dtype).reshape(shape)
    if meta["compression"] == "lz4" and not meta["hdf5_framed"]:
        return np.frombuffer(lz4.block.decompress(blob, uncompressed_size=nbytes), dtype=dtype).reshape(shape)
    if not meta["hdf5_framed"]:  # bslz4 without the 12-byte header: bitshuffle's default 8 KiB blocks
        blob = nbytes.to_bytes(8, "big") + (8192).to_bytes(4, "big") + blob
    filter_ = hdf5plugin.Bitshuffle(cname="lz4") if meta["compression"] == "bslz4" else hdf5plugin.LZ4()
    return hdf5_decode(blob, shape, dtype, filter_)
