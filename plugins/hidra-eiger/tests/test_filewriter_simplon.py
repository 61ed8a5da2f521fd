"""The FileWriter path's parsing without sockets: listing shapes (eiger.md §3.3), entry sanitising (protocol §9 D5),
series names and URLs."""
from __future__ import annotations

import pytest

from hidra_core import PathRefused

from hidra_eiger.filewriter.simplon import ListingError, data_url, parse_listing, parse_value, sanitise, series_of


@pytest.mark.parametrize("body, entries", [
    (["a_master.h5", "d/a_data_000001.h5"], ["a_master.h5", "d/a_data_000001.h5"]),  # 1.5 / 1.6
    ({"value": ["x.h5"], "value_type": "list", "access_mode": "r"}, ["x.h5"]),  # 1.8
    ({"value": None, "value_type": "list"}, []),  # 1.8, no file yet
    ([], []),
])
def test_listing_shapes_of_every_api_version_are_parsed(body: object, entries: list[str]) -> None:
    assert parse_listing(body) == entries


@pytest.mark.parametrize("body", [{"files": []}, {"value": "x.h5"}, {"value": {"a": 1}}, "x.h5", 3, None])
def test_listing_of_an_unknown_shape_is_an_error_naming_it(body: object) -> None:
    with pytest.raises(ListingError, match="listing"):
        parse_listing(body)


def test_value_objects_and_bare_values_are_read() -> None:
    assert parse_value({"value": "1.8.0", "value_type": "string"}) == "1.8.0"
    assert parse_value("1.6.0") == "1.6.0"


@pytest.mark.parametrize("entry, problem", [
    ("/abs/x.h5", "absolute"), ("../x.h5", "'..'"), ("a/../../x.h5", "'..'"), ("a//b.h5", "empty"),
    ("a/", "empty"), ("", "empty"), (".", "'.'"), ("a/b\x01.h5", "forbidden"), ("a\\b.h5", "forbidden"),
    ("a/\n.h5", "forbidden"), (7, "not a string"), (None, "not a string"),
])
def test_hostile_listing_entries_are_refused_naming_the_problem(entry: object, problem: str) -> None:
    with pytest.raises(PathRefused, match=problem):
        sanitise(entry)


def test_entries_are_split_into_directory_and_name_with_their_series() -> None:
    data = sanitise("current/raw/s1/series_7_data_000012.h5")
    assert (data.relative_path, data.filename, data.series, data.number) == (
        "current/raw/s1", "series_7_data_000012.h5", "current/raw/s1/series_7", 12)
    master = sanitise("series_7_master.h5")
    assert (master.relative_path, master.series, master.master) == ("", "series_7", True)
    other = sanitise("notes.txt")
    assert (other.series, other.number, other.master) == ("", -1, False)


def test_the_highest_data_file_per_series_is_known() -> None:
    entries = [sanitise(n) for n in ("a_master.h5", "a_data_000001.h5", "a_data_000002.h5", "b_master.h5", "x")]
    assert series_of(entries) == {"a": 2, "b": 0}


def test_file_urls_quote_each_component() -> None:
    assert data_url("http://dcu:80/data", "run 1/a#b?.h5") == "http://dcu:80/data/run%201/a%23b%3F.h5"
