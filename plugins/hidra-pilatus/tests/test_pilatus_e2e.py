"""Pilatus images end to end: a camserver stand-in writes CBF and TIFF images (both write patterns, slowly, in
pieces) -> ``hidra sender`` (``pilatus`` source) -> ``hidra receiver`` (``files``), and a STREAM analysis client
in a process of its own (``hidra_core.client.stream``, as an analysis program uses it) that gets every image with
its header in ``metadata``, over real ZeroMQ."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from integration.hidra_proc import Hidra, receiver_overrides
from legacy.emulator import raw_request
from pilatus_support import HEADER, assert_metadata

from hidra_core.testing import wait_until
from hidra_pilatus.sim import image_bytes, write_image

pytestmark = pytest.mark.integration

SHAPE = (195, 487)
CHUNK = 16 * 1024  # several chunks per image: the metadata must come with the whole file


#: the analysis client: prints one JSON line per file, its wire metadata and the SHA-256 of its data
CLIENT = """
import hashlib, json, sys
import hidra_core.client

for n, (meta, data) in enumerate(hidra_core.client.stream("127.0.0.1", com_port=int(sys.argv[1]), timeout=30)):
    print(json.dumps({"meta": meta, "sha256": hashlib.sha256(data).hexdigest()}), flush=True)
    if n + 1 == int(sys.argv[2]):
        break
"""


def stream_client(rig: Rig, files: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(rig.com_port), str(files)], stdout=subprocess.PIPE,
                            text=True)


def received(client: subprocess.Popen) -> dict[str, tuple[dict[str, Any], str]]:
    """filename -> (wire metadata, SHA-256 of the data) of what the client printed before it ended."""
    try:
        out, _ = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    lines = [json.loads(line) for line in out.splitlines()]
    return {line["meta"]["filename"]: (line["meta"], line["sha256"]) for line in lines}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Rig:
    def __init__(self, base: Path) -> None:
        self.source, self.target = base / "source", base / "target"
        self.source.mkdir()
        self.target.mkdir()
        self.receiver = Hidra("receiver", base / "receiver.log", receiver_overrides(self.target))
        self.procs = [self.receiver]
        self.receiver.wait_ready()
        data, confirmations, _status = self.receiver.endpoints()
        self.sender = Hidra("sender", base / "sender.log", [
            "sender.source.type=pilatus", f"sender.source.pilatus.path={self.source}", f"sender.chunksize={CHUNK}",
            f"sender.storage.data={data}", f"sender.storage.confirmations={confirmations}",
            f"sender.ledger.path={base / 'ledger.sqlite'}", "sender.clients.com=tcp://127.0.0.1:0",
            "sender.clients.request=tcp://127.0.0.1:0"])
        self.procs.append(self.sender)
        self.sender.wait_ready()
        found = re.search(r"com tcp://127.0.0.1:(\d+), request tcp://127.0.0.1:(\d+)", self.sender.text())
        assert found, self.sender.text()
        self.com_port, self.request_port = int(found.group(1)), int(found.group(2))

    def connected(self) -> bool:
        reply = raw_request(f"tcp://127.0.0.1:{self.com_port}", [b"", b"t", b"HIDRA_STATUS", b"[]"])
        return bool(reply) and any(t["connected"] for t in json.loads(reply[1])["targets"])

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


IMAGES = {  # name -> (write pattern, tiff)
    "lyso_00001.cbf": ("in_place", False), "lyso_00002.cbf": ("rename", False), "lyso_00003.tif": ("rename", True),
    "lyso_00004.tif": ("in_place", True),
}


def test_images_reach_storage_and_a_stream_client_with_their_header_in_the_metadata(rig: Rig) -> None:
    written = {name: image_bytes(HEADER, SHAPE, seed=n, tiff=tiff) for n, (name, (_p, tiff)) in enumerate(
        IMAGES.items())}

    def camserver() -> None:
        wait_until(rig.connected, 30, what="the stream client's connection")
        for name, (pattern, _tiff) in IMAGES.items():
            write_image(str(rig.source / name), written[name], pattern, pieces=6, pause_s=0.02)

    client = stream_client(rig, len(IMAGES))
    writer = threading.Thread(target=camserver, daemon=True)
    writer.start()
    got = received(client)
    writer.join(30)
    assert sorted(got) == sorted(IMAGES)
    for name, (meta, data) in got.items():
        assert data == sha(written[name]), f"{name} arrived different from what was written"
        assert_metadata(meta["metadata"], fmt="tiff" if name.endswith(".tif") else "cbf", shape=SHAPE)
        assert (meta["metadata"]["series"], meta["metadata"]["frame"]) == ("lyso", int(name[5:10]))
        assert meta["series"] == "lyso"
    wait_until(lambda: all((rig.target / name).is_file() and (rig.target / name).read_bytes() == data
                           for name, data in written.items()), 30, what="every image stored byte-identical")
    assert not [p.name for p in rig.target.iterdir() if p.name.endswith(".tmp")], "a temp name was stored"


def test_a_corrupt_image_is_stored_and_streamed_with_its_metadata_error(rig: Rig) -> None:
    broken = image_bytes(HEADER, SHAPE)[:500]

    def camserver() -> None:
        wait_until(rig.connected, 30, what="the stream client's connection")
        write_image(str(rig.source / "cut_00009.cbf"), broken, "rename")

    client = stream_client(rig, 1)
    writer = threading.Thread(target=camserver, daemon=True)
    writer.start()
    (meta, data), = received(client).values()
    writer.join(30)
    assert (meta["filename"], data) == ("cut_00009.cbf", sha(broken))
    assert meta["metadata"]["metadata_error"].startswith("no binary section: the file ends after 500 bytes")
    assert meta["metadata"]["frame"] == 9
    wait_until(lambda: (rig.target / "cut_00009.cbf").is_file(), 30, what="the corrupt image stored")
    assert (rig.target / "cut_00009.cbf").read_bytes() == broken
