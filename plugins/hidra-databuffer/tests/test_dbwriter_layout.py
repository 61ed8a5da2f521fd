"""The two HDF5 layouts of databuffer.md §9, written by the writer's query + write path from a fake data API over
real HTTP (§14 "Writer HDF5")."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from dbwriter_support import GENERAL, content, request_record, walk

from hidra_databuffer.dbwriter.fakeapi import CAMERA, FakeDataApi, SampleChannel, dbw_samples, global_date
from hidra_databuffer.dbwriter.query import QueryError
from hidra_databuffer.dbwriter.request import WriteRequest
from hidra_databuffer.dbwriter.service import WriterOptions, write_file

START, END = 1000, 1019
SAMPLES = {ch.name: ch for ch in dbw_samples()}
UNKNOWN = "SAR-NOT:THERE"
DTYPES = {"SAR-CVME-TIFALL5:FLOAT32": ("float32", (1,)), "SAR-CVME-TIFALL5:FLOAT64": ("float64", (1,)),
          "SAR-CVME-TIFALL5:INT32": ("int32", (1,)), "SAR-CVME-TIFALL5:UINT16": ("uint16", (1,)),
          "SAR-CVME-TIFALL5:WAVE": ("float64", (1024,)), "SAR-CVME-TIFALL5:TEXT": ("object", (1,)),
          "SAR-CVME-TIFALL5:FLAG": ("bool", (1,)), CAMERA: ("uint16", (494, 659)),
          "SAR-CVME-TIFALL5:NODATA": ("float64", (1,))}


@pytest.fixture(scope="module")
def api() -> Iterator[FakeDataApi]:
    with FakeDataApi() as fake:
        yield fake


def _write(api: FakeDataApi, path: Path, channels: list[str] | None = None, **params: Any) -> Path:
    names = channels if channels is not None else [*SAMPLES, UNKNOWN]
    request = WriteRequest.from_record(request_record(names, START, END, str(path), **params))
    write_file(request, WriterOptions(data_api_url=api.url))
    return path


def _pulses(name: str) -> list[int]:
    return [p for p in range(START, END + 1) if SAMPLES[name].has(p)]


def test_compact_layout_has_each_channels_own_events_with_dbw_dtypes_and_reversed_shapes(api: FakeDataApi,
                                                                                          tmp_path: Path) -> None:
    path = _write(api, tmp_path / "compact.h5")
    with h5py.File(path, "r") as h5:
        assert set(h5) == {"general", "data"}
        assert set(h5["data"]) == set(SAMPLES)  # one group per channel, ':' kept; the unknown one skipped
        for name, (dtype, row) in DTYPES.items():
            group = h5[f"data/{name}"]
            assert set(group) == {"data", "pulse_id", "is_data_present", "global_date"}
            pulses = _pulses(name)
            assert (str(group["data"].dtype), group["data"].shape) == (dtype, (len(pulses), *row)), name
            assert group["pulse_id"].dtype == np.int64 and group["pulse_id"][()].tolist() == pulses
            assert group["is_data_present"].dtype == np.bool_ and group["is_data_present"][()].all()
            assert h5py.check_string_dtype(group["global_date"].dtype).encoding == "utf-8"
            assert [d.decode() for d in group["global_date"][()]] == [global_date(p) for p in pulses]
        assert h5[f"data/{CAMERA}/data"].shape == (3, 494, 659)
        assert h5["data/SAR-CVME-TIFALL5:NODATA/data"].shape == (0, 1)  # configs, no data: empty datasets
        assert h5py.check_string_dtype(h5["data/SAR-CVME-TIFALL5:TEXT/data"].dtype) is not None
        _check_values(h5, SAMPLES, _pulses)


def _check_values(h5: h5py.File, samples: dict[str, SampleChannel], pulses_of: object) -> None:
    for name, sample in samples.items():
        group = h5[f"data/{name}"]
        for row, (pid, present) in enumerate(zip(group["pulse_id"][()], group["is_data_present"][()])):
            got = group["data"][row]
            if not present:
                assert (got == (b"" if sample.type == "string" else 0)).all(), (name, pid)
            elif sample.type == "string":
                assert got[0].decode() == sample.value(int(pid))
            else:
                want = np.asarray(sample.value(int(pid))).reshape(got.shape)
                assert np.array_equal(got, want.astype(got.dtype)), (name, pid)


def test_extended_layout_uses_the_union_of_pulse_ids_with_gaps_marked(api: FakeDataApi, tmp_path: Path) -> None:
    channels = ["SAR-CVME-TIFALL5:INT32", "SAR-CVME-TIFALL5:TEXT", CAMERA, "SAR-CVME-TIFALL5:NODATA", UNKNOWN]
    path = _write(api, tmp_path / "extended.h5", channels, output_file_format="extended")
    union = sorted({p for name in channels[:3] for p in _pulses(name)})
    assert union != list(range(START, END + 1))  # pulses no channel has stay absent: nothing densified
    with h5py.File(path, "r") as h5:
        for name in channels[:4]:
            group = h5[f"data/{name}"]
            assert group["pulse_id"][()].tolist() == union
            present = [p in _pulses(name) for p in union]
            assert group["is_data_present"][()].tolist() == present
            dates = [d.decode() for d in group["global_date"][()]]
            assert dates == [global_date(p) if here else "" for p, here in zip(union, present)]
            assert group["data"].shape[0] == len(union)
        assert h5[f"data/{CAMERA}/data"].shape == (len(union), 494, 659)
        assert not h5["data/SAR-CVME-TIFALL5:NODATA/is_data_present"][()].any()
        _check_values(h5, {n: SAMPLES[n] for n in channels[:4]}, _pulses)


@pytest.mark.parametrize("fmt", [None, "EXTENDED", "anything"])
def test_any_output_file_format_but_compact_is_extended(api: FakeDataApi, tmp_path: Path, fmt: str | None) -> None:
    path = _write(api, tmp_path / "f.h5", ["SAR-CVME-TIFALL5:INT32", "SAR-CVME-TIFALL5:FLAG"],
                  output_file_format=fmt)
    with h5py.File(path, "r") as h5:
        assert h5["data/SAR-CVME-TIFALL5:INT32/pulse_id"].shape == (END - START + 1,)


def test_general_datasets_are_scalar_byte_strings_and_nothing_has_attributes(api: FakeDataApi,
                                                                             tmp_path: Path) -> None:
    for fmt in ("compact", "extended"):
        path = _write(api, tmp_path / f"{fmt}.h5", output_file_format=fmt)
        with h5py.File(path, "r") as h5:
            for key in ("created", "instrument", "process", "user"):
                dset = h5[f"general/{key}"]
                assert dset.shape == () and dset.dtype.kind == "S"
                assert dset[()] == np.bytes_(GENERAL[f"general/{key}"].encode())
        for name, obj in walk(path):
            assert dict(obj.attrs) == {}, name
            if isinstance(obj, h5py.Dataset):
                assert obj.chunks is None and obj.compression is None, name  # contiguous, uncompressed


def test_a_slash_in_a_channel_name_makes_nested_groups(tmp_path: Path) -> None:
    sample = SampleChannel("SAR/NESTED:VAL", "float64", [1], lambda p: True, lambda p: float(p))
    with FakeDataApi([sample]) as api:
        path = _write(api, tmp_path / "n.h5", [sample.name])
    with h5py.File(path, "r") as h5:
        assert h5["data/SAR/NESTED:VAL/data"].shape == (END - START + 1, 1)


def test_a_bare_file_name_is_written_in_the_working_directory(api: FakeDataApi, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # F8: DBW called os.makedirs("") and failed
    _write(api, Path("bare.h5"), ["SAR-CVME-TIFALL5:FLAG"])
    assert (tmp_path / "bare.h5").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["bare.h5"]


@pytest.mark.parametrize(("answer", "words"), [
    ({"status": 500, "error": "boom"}, "server error"),
    ({"channels": []}, "dict instead of a list"),
    ("just a string", "instead of a list"),
    ([{"no": "channel"}], "entry 0"),
])
def test_a_response_that_is_not_the_list_fails_and_leaves_no_file(tmp_path: Path, answer: object,
                                                                  words: str) -> None:
    with FakeDataApi() as api:
        api.answer = answer
        with pytest.raises(QueryError, match=words):
            _write(api, tmp_path / "bad.h5")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp


def test_same_request_written_twice_gives_identical_content(api: FakeDataApi, tmp_path: Path) -> None:
    first, second = _write(api, tmp_path / "a.h5"), _write(api, tmp_path / "b.h5")
    assert content(first) == content(second)
