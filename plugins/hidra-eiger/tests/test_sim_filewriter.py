"""The FileWriter part of hidra-eiger-sim over real HTTP (requests) against the console script in its own process."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter that reading the frames needs)
import numpy as np
import pytest
import requests
from conftest import SIZE, _script, expected_frame

from hidra_core.testing import wait_until

TIMEOUT = (5, 30)


class Dcu:
    """One simulator process and a requests session to it."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([_script(), "--size", f"{SIZE[0]}x{SIZE[1]}", *args], stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"hidra-eiger-sim exited with {self.proc.wait(timeout=10)} before it listened"
        info = json.loads(line)
        self.url, self.version = info["rest"], info["api_version"]
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)

    def get(self, path: str) -> Any:
        answer = self.request("GET", path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def put(self, module: str, param: str, value: Any) -> Any:
        answer = self.request("PUT", f"/{module}/api/{self.version}/config/{param}", json={"value": value})
        assert answer.status_code == 200, (param, answer.text)
        return answer.json()

    def command(self, module: str, name: str, value: Any = None) -> Any:
        body = None if value is None else {"value": value}
        answer = self.request("PUT", f"/{module}/api/{self.version}/command/{name}", json=body)
        assert answer.status_code == 200, (name, answer.text)
        return answer.json()

    def listing(self, where: str = "files") -> Any:
        return self.get(f"/filewriter/api/{self.version}/{where}")

    def names(self) -> list[str]:
        got = self.listing()
        return list(got if isinstance(got, list) else got["value"] or [])

    def put_file(self, path: str, content: bytes) -> Any:
        return self.command("simulator", "put_file", {"path": path,
                                                      "content_b64": base64.b64encode(content).decode()})

    def created(self) -> list[dict[str, Any]]:
        return list(self.get(f"/simulator/api/{self.version}/status/created")["value"])

    def status(self, module: str, param: str) -> Any:
        return self.get(f"/{module}/api/{self.version}/status/{param}")["value"]

    def series(self, nimages: int, per_file: int, pattern: str = "series_$id") -> int:
        """Arm and trigger one series with the FileWriter on; its series id once the trigger returned."""
        self.put("filewriter", "mode", "enabled")
        self.put("filewriter", "nimages_per_file", per_file)
        self.put("filewriter", "name_pattern", pattern)
        self.put("detector", "nimages", nimages)
        self.put("detector", "frame_time", 0.002)
        series = int(self.command("detector", "arm")["sequence id"])
        self.command("detector", "trigger")
        return series


@pytest.fixture
def dcu() -> Iterator[Dcu]:
    sim = Dcu()
    yield sim
    sim.close()


@pytest.fixture
def dcu16() -> Iterator[Dcu]:
    sim = Dcu("--api-version", "1.6.0")
    yield sim
    sim.close()


# --- listing ---------------------------------------------------------------------------------------------------


def test_listing_1_8_is_a_value_object_null_when_empty_at_all_three_paths(dcu: Dcu) -> None:
    for where in ("files", "files/", "status/files"):
        assert dcu.listing(where) == {"value": None, "value_type": "list", "access_mode": "r"}
    dcu.put_file("b/second.h5", b"2")
    dcu.put_file("a/first.h5", b"1")
    for where in ("files", "files/", "status/files"):
        assert dcu.listing(where)["value"] == ["b/second.h5", "a/first.h5"]  # creation order
    assert dcu.status("filewriter", "files") == ["b/second.h5", "a/first.h5"]


def test_listing_1_6_is_a_bare_list_and_has_no_status_files(dcu16: Dcu) -> None:
    assert dcu16.listing("files") == [] and dcu16.listing("files/") == []
    dcu16.put_file("x_master.h5", b"m")
    assert dcu16.listing("files") == ["x_master.h5"] and dcu16.listing("files/") == ["x_master.h5"]
    assert dcu16.request("GET", "/filewriter/api/1.6.0/status/files").status_code == 404
    assert dcu16.request("GET", "/filewriter/api/1.8.0/files").status_code == 404  # not this DCU's version


def test_hostile_names_put_by_tests_are_listed_verbatim(dcu: Dcu) -> None:
    names = ["../x", "/abs", "a//b", "sp ace/ü#?.h5"]
    for name in names:
        dcu.put_file(name, b"x")
    assert dcu.names() == names


# --- /data --------------------------------------------------------------------------------------------------------


def test_get_head_delete_data_with_content_length_etag_and_404(dcu: Dcu) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    dcu.put_file("raw/s1/f.h5", content)
    got = dcu.request("GET", "/data/raw/s1/f.h5")
    assert got.status_code == 200 and got.content == content
    assert got.headers["Content-Length"] == str(len(content))
    assert got.headers["ETag"].endswith(f'-{len(content):x}"') and got.headers["Last-Modified"].endswith("GMT")
    head = dcu.request("HEAD", "/data/raw/s1/f.h5")
    assert head.status_code == 200 and head.content == b""
    assert {k: head.headers[k] for k in ("Content-Length", "ETag")} == {k: got.headers[k] for k in
                                                                       ("Content-Length", "ETag")}
    assert dcu.request("DELETE", "/data/raw/s1/f.h5").status_code == 204
    assert dcu.names() == []
    for method in ("GET", "HEAD", "DELETE"):
        assert dcu.request(method, "/data/raw/s1/f.h5").status_code == 404
    assert dcu.request("GET", "/data/never.h5").status_code == 404
    [record] = dcu.created()
    assert record["deleted"] and record["deleted_at"] is not None and not record["wiped"]
    assert dcu.get(f"/simulator/api/{dcu.version}/status/requests")["value"] == {
        "list": 1, "get": 3, "head": 2, "delete": 2, "faults": 0}


def test_name_reuse_after_delete_serves_the_new_content_and_records_both(dcu: Dcu) -> None:
    dcu.put_file("series_1_master.h5", b"first")
    assert dcu.request("DELETE", "/data/series_1_master.h5").status_code == 204
    dcu.put_file("series_1_master.h5", b"second life")
    assert dcu.names() == ["series_1_master.h5"]
    assert dcu.request("GET", "/data/series_1_master.h5").content == b"second life"
    old, new = dcu.created()
    assert (old["path"], old["deleted"], old["md5"]) == ("series_1_master.h5", True, hashlib.md5(b"first").hexdigest())
    assert (new["path"], new["deleted"], new["md5"]) == ("series_1_master.h5", False,
                                                         hashlib.md5(b"second life").hexdigest())


# --- acquisition ------------------------------------------------------------------------------------------------


def _download(dcu: Dcu, names: list[str], into: Path) -> dict[str, bytes]:
    out = {}
    for name in names:
        got = dcu.request("GET", f"/data/{name}")
        assert got.status_code == 200
        out[name] = got.content
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(got.content)
    return out


def test_series_with_nimages_per_file_2_writes_master_and_3_data_files_in_a_sub_directory(dcu: Dcu,
                                                                                         tmp_path: Path) -> None:
    series = dcu.series(5, 2, pattern="current/raw/sample1/scan_$id")
    base = f"current/raw/sample1/scan_{series}"
    names = [f"{base}_master.h5"] + [f"{base}_data_{n:06d}.h5" for n in (1, 2, 3)]
    assert dcu.names() == names
    files = _download(dcu, names, tmp_path)
    created = {r["path"]: r for r in dcu.created()}
    for name, content in files.items():  # the published md5 is that of the bytes served
        assert created[name]["complete"] and created[name]["md5"] == hashlib.md5(content).hexdigest()
    with h5py.File(tmp_path / names[0], "r") as master:
        assert master["entry/instrument/detector/detectorSpecific/nimages"][()] == 5
        assert sorted(master["entry/data"]) == ["data_000001", "data_000002", "data_000003"]
        frames = np.concatenate([master[f"entry/data/data_{n:06d}"][()] for n in (1, 2, 3)])
    assert frames.shape == (5, SIZE[1], SIZE[0])
    for index in range(5):
        np.testing.assert_array_equal(frames[index], expected_frame(index))
    with h5py.File(tmp_path / names[3], "r") as last:
        assert list(last["entry/data/image_id"][()]) == [5]  # image_nr_start 1: ids 1..5, the last file has 5
        assert last["entry/data/data"].attrs["image_nr_low"] == 5
        code, _flags, opts, _name = last["entry/data/data"].id.get_create_plist().get_filter(0)
        assert (code, opts[-1]) == (32008, 2)  # the bitshuffle filter with LZ4, as the DCU writes


def test_nimages_per_file_0_puts_every_image_in_the_master(dcu: Dcu) -> None:
    series = dcu.series(3, 0)
    assert dcu.names() == [f"series_{series}_master.h5"]
    content = dcu.request("GET", f"/data/series_{series}_master.h5").content
    with h5py.File(io.BytesIO(content), "r") as master:
        np.testing.assert_array_equal(master["entry/data/data"][2], expected_frame(2))
        assert list(master["entry/data/image_id"][()]) == [1, 2, 3]


def test_random_file_content_gives_files_of_the_configured_size(dcu: Dcu) -> None:
    dcu.put("simulator", "file_content", "random")
    dcu.put("simulator", "random_file_bytes", 12345)
    series = dcu.series(2, 1)
    names = dcu.names()
    assert names == [f"series_{series}_master.h5", f"series_{series}_data_000001.h5",
                     f"series_{series}_data_000002.h5"]
    assert {len(dcu.request("GET", f"/data/{n}").content) for n in names} == {12345}


# --- faults -------------------------------------------------------------------------------------------------------


def test_file_grows_over_grow_s_as_a_prefix_of_its_final_content(dcu: Dcu) -> None:
    content = os.urandom(1 << 20)
    dcu.put("simulator", "grow_s", 2.0)
    dcu.put_file("growing.h5", content)
    sizes: list[int] = []

    def grown() -> bool:
        got = dcu.request("GET", "/data/growing.h5")
        assert content.startswith(got.content) and int(got.headers["Content-Length"]) == len(got.content)
        sizes.append(len(got.content))
        return len(got.content) == len(content)

    wait_until(grown, what="the file to reach its final size")
    assert sizes[0] < len(content) and sizes == sorted(sizes)
    assert dcu.created()[0]["complete"]


def test_full_buffer_stalls_the_series_until_files_are_deleted(dcu: Dcu) -> None:
    dcu.put("simulator", "file_content", "random")
    dcu.put("simulator", "random_file_bytes", 100_000)
    dcu.put("simulator", "buffer_bytes", 250_000)  # master (half written until the end) + 2 data files
    trigger = threading.Thread(target=dcu.series, args=(4, 1))
    trigger.start()
    wait_until(lambda: dcu.status("detector", "builder/dcu_buffer_free") == 0.0, what="a full buffer")
    assert dcu.status("detector", "state") == "acquire"
    assert [n[-9:] for n in dcu.names()] == ["master.h5", "000001.h5", "000002.h5"]  # the 3rd image waits
    assert dcu.request("DELETE", "/data/series_1_data_000001.h5").status_code == 204
    wait_until(lambda: dcu.names()[-1].endswith("_data_000003.h5"), what="the stalled image to be written")
    assert dcu.request("DELETE", "/data/series_1_data_000002.h5").status_code == 204
    trigger.join(timeout=30)
    assert not trigger.is_alive() and dcu.status("detector", "state") == "idle"
    assert [n[-9:] for n in dcu.names()] == ["master.h5", "000003.h5", "000004.h5"]


def test_a_data_file_is_listed_with_its_first_image_and_grows_image_by_image(dcu: Dcu) -> None:
    dcu.put("simulator", "file_content", "random")
    dcu.put("simulator", "random_file_bytes", 100_000)
    dcu.put("simulator", "buffer_bytes", 50_000 + 40_000)  # master half + 2 of the data file's 5 images
    trigger = threading.Thread(target=dcu.series, args=(5, 5))
    trigger.start()
    wait_until(lambda: dcu.status("detector", "builder/dcu_buffer_free") == 0.0, what="a full buffer")
    partial = dcu.request("GET", "/data/series_1_data_000001.h5")
    assert len(partial.content) == int(partial.headers["Content-Length"]) == 40_000
    assert [r["complete"] for r in dcu.created()] == [False, False]
    dcu.put("simulator", "buffer_bytes", 0)
    trigger.join(timeout=30)
    assert not trigger.is_alive()
    final = dcu.request("GET", "/data/series_1_data_000001.h5").content
    assert len(final) == 100_000 and final.startswith(partial.content)
    assert [r["complete"] for r in dcu.created()] == [True, True]


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_fail_every_answers_500_and_a_failed_delete_keeps_the_file(dcu: Dcu, method: str) -> None:
    dcu.put_file("f.h5", b"data")
    dcu.put("simulator", "fail_every", 2)
    assert dcu.request(method, "/data/f.h5").status_code in (200, 204)  # 1st passes, 2nd fails
    dcu.put_file("f.h5", b"data")
    assert dcu.request(method, "/data/f.h5").status_code == 500
    assert dcu.names() == ["f.h5"]
    assert dcu.get(f"/simulator/api/{dcu.version}/status/requests")["value"]["faults"] == 1


def test_reset_every_breaks_the_body_with_a_tcp_reset(dcu: Dcu) -> None:
    dcu.put_file("f.h5", os.urandom(2 << 20))
    dcu.put("simulator", "reset_every", 1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError) as caught:
        dcu.request("GET", "/data/f.h5")
    assert isinstance(caught.value.args[0].args[1], ConnectionResetError)
    dcu.put("simulator", "reset_every", 0)
    assert len(dcu.request("GET", "/data/f.h5").content) == 2 << 20  # the next connection is fine


def test_truncate_every_closes_cleanly_after_half_the_body_under_a_full_content_length(dcu: Dcu) -> None:
    dcu.put_file("f.h5", os.urandom(2 << 20))
    dcu.put("simulator", "truncate_every", 1)
    answer = dcu.request("GET", "/data/f.h5", stream=True)
    assert answer.headers["Content-Length"] == str(2 << 20)
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        for piece in answer.iter_content(1 << 16):
            received += piece
    assert len(received) == 1 << 20


def test_no_content_length_serves_chunked_bodies(dcu: Dcu) -> None:
    content = os.urandom(1 << 20)
    dcu.put_file("f.h5", content)
    dcu.put("simulator", "no_content_length", True)
    got = dcu.request("GET", "/data/f.h5")
    assert "Content-Length" not in got.headers and got.headers["Transfer-Encoding"] == "chunked"
    assert got.content == content
    assert "Content-Length" not in dcu.request("HEAD", "/data/f.h5").headers


def test_data_delay_s_makes_a_slow_dcu_that_trips_a_read_timeout(dcu: Dcu) -> None:
    dcu.put_file("f.h5", b"late")
    dcu.put("simulator", "data_delay_s", 3.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        dcu.request("GET", "/data/f.h5", timeout=(5, 0.2))
    assert dcu.request("GET", "/data/f.h5").content == b"late"


def test_listing_fail_every_answers_500_to_every_nth_listing(dcu: Dcu) -> None:
    dcu.put("simulator", "listing_fail_every", 2)
    codes = [dcu.request("GET", f"/filewriter/api/{dcu.version}/files").status_code for _ in range(4)]
    assert codes == [200, 500, 200, 500]


def test_reboot_wipes_every_file_and_can_reset_the_series_counter(dcu: Dcu) -> None:
    dcu.put("simulator", "reboot_resets_series", True)
    first = dcu.series(2, 1)
    dcu.put_file("extra.h5", b"x")
    assert len(dcu.names()) == 4
    dcu.command("simulator", "reboot")
    assert dcu.listing() == {"value": None, "value_type": "list", "access_mode": "r"}
    assert all(r["wiped"] and not r["deleted"] for r in dcu.created())
    assert dcu.status("detector", "state") == "idle"
    assert dcu.series(2, 1) == first  # the same names come back: name reuse after a reboot
    assert dcu.names()[0] == f"series_{first}_master.h5"


def test_reboot_during_a_stalled_series_ends_it(dcu: Dcu) -> None:
    dcu.put("simulator", "file_content", "random")
    dcu.put("simulator", "random_file_bytes", 1000)
    dcu.put("simulator", "buffer_bytes", 1500)  # half the master + the first data file
    trigger = threading.Thread(target=dcu.series, args=(5, 1))
    trigger.start()
    wait_until(lambda: dcu.status("detector", "builder/dcu_buffer_free") == 0.0, what="a full buffer")
    dcu.command("simulator", "reboot")
    trigger.join(timeout=30)
    assert not trigger.is_alive() and dcu.names() == [] and dcu.status("detector", "state") == "idle"


def test_fault_flags_set_the_knobs_at_start_and_bad_ones_are_refused() -> None:
    sim = Dcu("--fault", "fail_every=3", "--fault", "grow_s=0.5", "--file-content", "random")
    try:
        for name, value in (("fail_every", 3), ("grow_s", 0.5), ("file_content", "random")):
            assert sim.get(f"/simulator/api/{sim.version}/config/{name}")["value"] == value
    finally:
        sim.close()
    bad = subprocess.run([_script(), "--fault", "grow_s=soon"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "grow_s takes a float" in bad.stderr
