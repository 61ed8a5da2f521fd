"""stevedore-backed driver loading: by role and name, failures as DriverLoadFailure naming role, name and cause.

Fake drivers (``tests/data/fake-dists``, group ``hidra.event_sources``): ``hidra_fake_ok``,
``hidra_fake_importerror``, ``hidra_fake_raises_on_init``, ``hidra_fake_not_a_driver`` and
``hidra_fake_duplicate`` (exported by both ``hidra-fake`` and ``hidra-fake-dup``).
"""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from hidra_core import ConfigError, DriverLoadFailure, EmptyConfig, EventSource, Fetcher, Transport, Writer
from hidra_core.host.drivers import ROLES, build_driver, discover, driver_config_class, load_driver_class
from hidra_core.host.kernel import create_driver

ES = "event source"


def test_roles_map_to_their_groups_and_base_classes() -> None:
    assert ROLES == {
        "event source": ("hidra.event_sources", EventSource),
        "fetcher": ("hidra.fetchers", Fetcher),
        "transport": ("hidra.transports", Transport),
        "writer": ("hidra.writers", Writer),
    }


def test_good_driver_loads_and_builds() -> None:
    from hidra_fake.ok import FakeConfig, FakeEventSource

    assert load_driver_class(ES, "hidra_fake_ok") is FakeEventSource
    assert driver_config_class(ES, "hidra_fake_ok") is FakeConfig
    driver = build_driver(ES, "hidra_fake_ok", FakeConfig(count=2))
    assert isinstance(driver, FakeEventSource)
    assert driver.config.count == 2 and driver.root == "/fake-root"


def test_create_driver_validates_options_with_the_drivers_own_model() -> None:
    driver = create_driver(ES, "hidra_fake_ok", {"count": 3, "root": "/r"}, "inst.yaml", "sender.source.hidra_fake_ok")
    assert (driver.config.count, driver.config.root) == (3, "/r")
    driver.open(None)
    assert [e.filename for e in driver.poll(0)] == ["fake-0", "fake-1", "fake-2"]
    assert driver.poll(0) == []


def test_create_driver_refuses_unknown_options_naming_file_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        create_driver(ES, "hidra_fake_ok", {"bogus": 1}, "inst.yaml", "sender.source.hidra_fake_ok")
    text = str(info.value)
    assert "inst.yaml" in text and "sender.source.hidra_fake_ok.bogus: unknown key" in text


def test_missing_driver_names_role_name_and_installed_drivers() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        load_driver_class(ES, "no_such_source")
    exc = info.value
    assert (exc.role, exc.name) == (ES, "no_such_source")
    text = str(exc)
    assert "event source driver 'no_such_source'" in text
    assert "hidra.event_sources" in text
    installed = text.split("installed:", 1)[1]
    for name in ("inotify", "hidra_fake_ok", "hidra_fake_duplicate"):
        assert name in installed


def test_a_driver_of_another_role_is_not_found() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        load_driver_class("writer", "hidra_fake_ok")
    assert info.value.role == "writer"
    assert "hidra.writers" in str(info.value) and "files" in str(info.value)


def test_import_error_names_the_cause_and_the_distribution() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        load_driver_class(ES, "hidra_fake_importerror")
    text = str(info.value)
    assert info.value.name == "hidra_fake_importerror"
    assert "hidra_fake.importerror:BrokenEventSource" in text and "hidra-fake" in text
    assert "ModuleNotFoundError" in text and "hidra_fake_no_such_dependency" in text


def test_raises_on_init_is_a_driver_load_failure() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        build_driver(ES, "hidra_fake_raises_on_init", EmptyConfig())
    text = str(info.value)
    assert "hidra_fake_raises_on_init" in text and "raised on init" in text
    assert "RuntimeError" in text and "not reachable" in text
    assert isinstance(info.value.__cause__, RuntimeError)


def test_duplicate_name_names_both_distributions() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        load_driver_class(ES, "hidra_fake_duplicate")
    text = str(info.value)
    assert "hidra_fake_duplicate" in text
    assert "hidra-fake (hidra_fake.duplicate_name:DuplicateEventSource)" in text
    assert "hidra-fake-dup (hidra_fake_dup.duplicate_name:OtherDuplicateEventSource)" in text


def test_a_class_that_is_not_a_driver_is_refused() -> None:
    with pytest.raises(DriverLoadFailure) as info:
        load_driver_class(ES, "hidra_fake_not_a_driver")
    assert "not a subclass of EventSource" in str(info.value)


def test_discover_reports_every_driver_entry_point() -> None:
    statuses = discover()
    fakes = {(s.name, s.distribution): s for s in statuses if s.name.startswith("hidra_fake")}
    assert set(fakes) == {
        ("hidra_fake_ok", "hidra-fake"), ("hidra_fake_importerror", "hidra-fake"),
        ("hidra_fake_raises_on_init", "hidra-fake"), ("hidra_fake_not_a_driver", "hidra-fake"),
        ("hidra_fake_duplicate", "hidra-fake"), ("hidra_fake_duplicate", "hidra-fake-dup"),
    }
    assert all(s.group == "hidra.event_sources" and s.version == "0.1" for s in fakes.values())
    assert fakes["hidra_fake_ok", "hidra-fake"].loaded
    # discovery imports but never instantiates
    assert fakes["hidra_fake_raises_on_init", "hidra-fake"].loaded
    bad = fakes["hidra_fake_importerror", "hidra-fake"]
    assert not bad.loaded and "import failed" in bad.error and "hidra_fake_no_such_dependency" in bad.error
    assert "not a EventSource subclass" in fakes["hidra_fake_not_a_driver", "hidra-fake"].error
    dup_a, dup_b = fakes["hidra_fake_duplicate", "hidra-fake"], fakes["hidra_fake_duplicate", "hidra-fake-dup"]
    assert not dup_a.loaded and "name conflict" in dup_a.error and "hidra-fake-dup" in dup_a.error
    assert not dup_b.loaded and "name conflict" in dup_b.error and dup_b.error.endswith("hidra-fake")

    groups = {s.group for s in statuses}
    assert groups == {g for g, _ in ROLES.values()}


FIRST_PARTY = [
    (ES, "inotify", "hidra-inotify"),
    ("fetcher", "file", "hidra-files"),
    ("writer", "files", "hidra-files"),
    ("transport", "tcp", "hidra-zmq"),
    ("transport", "ipc", "hidra-zmq"),
    ("transport", "inproc", "hidra-zmq"),
]


@pytest.mark.parametrize(("role", "name", "dist"), FIRST_PARTY)
def test_first_party_drivers_load(role: str, name: str, dist: str) -> None:
    cls = load_driver_class(role, name)
    assert issubclass(cls, ROLES[role][1])
    config_class = cls.config_class
    assert issubclass(config_class, BaseModel)
    assert config_class.model_config.get("extra") == "forbid" and config_class.model_config.get("frozen")
    [status] = [s for s in discover() if s.group == ROLES[role][0] and s.name == name]
    assert status.loaded and status.distribution == dist, status
