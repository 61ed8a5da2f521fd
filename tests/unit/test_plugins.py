"""The pluggy host: isolated entry-point loading, block/allow lists, strict mode, invalid plugins, enrichment.

The ``hidra`` entry points come from ``tests/data/fake-dists`` (distribution ``hidra-fake``):
``hidra_fake_hooks`` (good), ``hidra_fake_importerror``, ``hidra_fake_badargs`` (argument not in the spec) and
``hidra_fake_unknownhook`` (implements ``hidra_nonexistent``).
"""
from __future__ import annotations

import logging
from importlib.metadata import EntryPoint
from typing import Any

import pluggy
import pytest

import hidra_core.host.plugins as plugins_module
from hidra_core import FileEvent, hookimpl
from hidra_core.host.plugins import PluginHost, is_selected

GOOD = "hidra_fake_hooks"
BROKEN = {"hidra_fake_importerror", "hidra_fake_badargs", "hidra_fake_unknownhook"}
FAKES = {GOOD} | BROKEN


def _by_name(statuses: list) -> dict[str, Any]:
    return {s.name: s for s in statuses if s.name in FAKES}


def _event(filename: str = "fake-enrich-0001.cbf") -> FileEvent:
    return FileEvent("/src", "run1", filename)


class Recorder:
    """An in-process observer plugin."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    @hookimpl
    def hidra_on_plugin_error(self, report: Any) -> None:
        self.reports.append(dict(report))


@pytest.fixture
def fake_reports() -> Any:
    from hidra_fake import hooks_ok

    hooks_ok.REPORTS.clear()
    yield hooks_ok.REPORTS
    hooks_ok.REPORTS.clear()


# --- loading in isolation ---------------------------------------------------------------------------------


def test_good_plugin_loads_and_broken_ones_are_reported_with_their_cause(caplog: pytest.LogCaptureFixture) -> None:
    host = PluginHost()
    with caplog.at_level(logging.WARNING, logger="hidra_core.host.plugins"):
        statuses = _by_name(host.load_entry_points())

    assert set(statuses) == FAKES
    good = statuses[GOOD]
    assert (good.loaded, good.error, good.distribution, good.version) == (True, "", "hidra-fake", "0.1")
    assert good.group == "hidra" and good.value == "hidra_fake.hooks_ok"
    assert host.manager.get_plugin(GOOD) is not None

    imp = statuses["hidra_fake_importerror"]
    assert not imp.loaded
    assert "import failed" in imp.error and "ImportError" in imp.error and "acme_sdk" in imp.error
    bad = statuses["hidra_fake_badargs"]
    assert not bad.loaded and "invalid hook implementation" in bad.error and "no_such_argument" in bad.error
    unknown = statuses["hidra_fake_unknownhook"]
    assert not unknown.loaded and "hidra_nonexistent" in unknown.error
    for name in BROKEN:
        assert host.manager.get_plugin(name) is None, name

    # the warning names the entry point, the distribution and the error
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("hidra_fake_importerror" in m and "hidra-fake" in m and "acme_sdk" in m for m in warned), warned


def test_broken_plugins_do_not_affect_the_good_one() -> None:
    host = PluginHost()
    host.load_entry_points()

    impls = [i.plugin_name for i in host.manager.hook.hidra_enrich_metadata.get_hookimpls()]
    assert GOOD in impls
    assert not BROKEN.intersection(impls)
    extra = host.enrich_metadata(_event(), {"filename": "fake-enrich-0001.cbf", "filesize": 42})
    # only the good plugin contributed; its attempt to override the protocol key "filename" was dropped
    assert extra == {"fake_detector": "hidra-fake", "fake_size_seen": 42}


def test_the_fake_hook_plugin_leaves_other_files_alone() -> None:
    host = PluginHost()
    host.load_entry_points()
    assert host.enrich_metadata(_event("scan_0001.h5"), {"filename": "scan_0001.h5"}) == {}


def test_load_failures_reach_every_observer_whatever_the_load_order(fake_reports: Any) -> None:
    # hidra_fake_badargs sorts before hidra_fake_hooks: its failure must still reach that plugin's observer
    host = PluginHost()
    early = Recorder()
    host.register(early, name="early-observer")
    host.load_entry_points()

    for reports in (early.reports, list(fake_reports)):
        failed = {r["plugin"] for r in reports}
        assert failed == BROKEN, reports
        assert all(r["hook"] == "" and r["error"] for r in reports)


def test_same_module_under_two_entry_point_names_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. a stale dist-info of an older release naming the same module under its old name
    eps = [EntryPoint("hidra_fake_alias", "hidra_fake.hooks_ok", "hidra"),
           EntryPoint("hidra_fake_hooks", "hidra_fake.hooks_ok", "hidra"),
           EntryPoint("hidra_fake_importerror", "hidra_fake.hooks_importerror", "hidra")]
    monkeypatch.setattr(plugins_module, "entry_points_of", lambda group: eps)
    host = PluginHost()
    statuses = {s.name: s for s in host.load_entry_points()}

    assert statuses["hidra_fake_alias"].loaded
    assert not statuses["hidra_fake_hooks"].loaded and "already registered" in statuses["hidra_fake_hooks"].error
    assert not statuses["hidra_fake_importerror"].loaded  # the loop went on after the conflict


def test_same_entry_point_name_twice_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [EntryPoint("hidra_fake_hooks", "hidra_fake.hooks_ok", "hidra"),
           EntryPoint("hidra_fake_hooks", "hidra_fake.hooks_badargs", "hidra")]
    monkeypatch.setattr(plugins_module, "entry_points_of", lambda group: eps)
    statuses = PluginHost().load_entry_points()
    assert [s.loaded for s in statuses] == [True, False]
    assert "already registered the name 'hidra_fake_hooks'" in statuses[1].error


# --- selection ----------------------------------------------------------------------------------------------


def test_disabled_plugins_are_not_loaded_at_all() -> None:
    host = PluginHost()
    statuses = _by_name(host.load_entry_points(disabled=sorted(BROKEN)))
    assert set(statuses) == {GOOD}
    assert statuses[GOOD].loaded
    assert [p for p in BROKEN if host.manager.get_plugin(p)] == []


def test_disabling_the_good_plugin_removes_its_hooks() -> None:
    host = PluginHost()
    host.load_entry_points(disabled=[GOOD])
    assert host.manager.get_plugin(GOOD) is None
    assert host.enrich_metadata(_event(), {}) == {}


def test_hidra_load_plugins_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", f" {GOOD} , not_installed,")
    host = PluginHost()
    statuses = host.load_entry_points()
    assert [s.name for s in statuses] == [GOOD]
    assert statuses[0].loaded


def test_hidra_load_plugins_empty_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "")
    host = PluginHost()
    assert host.load_entry_points() == []
    assert host.manager.get_plugins() == set()


def test_disabled_wins_over_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", GOOD)
    assert PluginHost().load_entry_points(disabled=[GOOD]) == []
    assert not is_selected(GOOD, [GOOD])
    monkeypatch.delenv("HIDRA_LOAD_PLUGINS")
    assert is_selected(GOOD) and not is_selected(GOOD, (GOOD,))


# --- strict mode --------------------------------------------------------------------------------------------


def test_strict_mode_reraises_import_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_STRICT_PLUGINS", "1")
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "hidra_fake_importerror")
    with pytest.raises(ImportError, match="acme_sdk"):
        PluginHost().load_entry_points()


def test_strict_mode_reraises_invalid_hookimpls_and_leaves_nothing_registered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_STRICT_PLUGINS", "1")
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "hidra_fake_badargs")
    host = PluginHost()
    with pytest.raises(pluggy.PluginValidationError, match="no_such_argument"):
        host.load_entry_points()
    assert host.manager.get_plugin("hidra_fake_badargs") is None


def test_strict_mode_refuses_unknown_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_STRICT_PLUGINS", "1")
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "hidra_fake_unknownhook")
    host = PluginHost()
    with pytest.raises(pluggy.PluginValidationError, match="hidra_nonexistent"):
        host.load_entry_points()
    assert host.manager.get_plugin("hidra_fake_unknownhook") is None


def test_strict_mode_off_unless_exactly_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_STRICT_PLUGINS", "0")
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "hidra_fake_importerror")
    [status] = PluginHost().load_entry_points()
    assert not status.loaded


# --- invalid hook implementations ---------------------------------------------------------------------------


def test_invalid_hookimpl_is_unregistered_and_its_other_hooks_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_LOAD_PLUGINS", "hidra_fake_badargs,hidra_fake_unknownhook")
    host = PluginHost()
    statuses = host.load_entry_points()
    assert [s.loaded for s in statuses] == [False, False]
    assert host.manager.get_plugins() == set()
    assert host.manager.hook.hidra_enrich_metadata.get_hookimpls() == []
    assert not host.has_enrichers
    assert host.enrich_metadata(_event(), {}) == {}


def test_registering_an_unknown_hook_in_process_is_refused() -> None:
    class Typo:
        @hookimpl
        def hidra_enrich_metdata(self, event: Any) -> dict:  # sic
            return {}

    host = PluginHost()
    with pytest.raises(pluggy.PluginValidationError, match="hidra_enrich_metdata"):
        host.register(Typo(), name="typo")
    assert host.manager.get_plugin("typo") is None


def test_optional_unknown_hooks_are_allowed() -> None:
    class Forward:
        @hookimpl(optionalhook=True)
        def hidra_from_a_newer_kernel(self) -> None:
            pass

    host = PluginHost()
    host.register(Forward(), name="forward")
    assert host.manager.get_plugin("forward") is not None


# --- enrich_metadata ----------------------------------------------------------------------------------------


class _Enricher:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[tuple[Any, Any]] = []

    @hookimpl
    def hidra_enrich_metadata(self, event: Any, metadata: Any) -> Any:
        self.calls.append((event, metadata))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_enrich_metadata_merges_every_implementation() -> None:
    host = PluginHost()
    a, b, none = _Enricher({"beamline": "p01"}), _Enricher({"detector": "acme"}), _Enricher(None)
    for i, plugin in enumerate((a, b, none)):
        host.register(plugin, name=f"e{i}")
    event, metadata = _event(), {"filename": "fake-enrich-0001.cbf", "filesize": 10}

    assert host.enrich_metadata(event, metadata) == {"beamline": "p01", "detector": "acme"}
    assert a.calls == [(event, metadata)] and b.calls == [(event, metadata)] and len(none.calls) == 1


@pytest.mark.parametrize("key", sorted(plugins_module._PROTECTED_KEYS))
def test_enrich_metadata_cannot_override_protocol_keys(key: str) -> None:
    host = PluginHost()
    host.register(_Enricher({key: "hijacked", "extra": 1}), name="greedy")
    assert host.enrich_metadata(_event(), {key: "original"}) == {"extra": 1}


def test_a_raising_enrich_impl_is_isolated_and_reported() -> None:
    host = PluginHost()
    recorder = Recorder()
    host.register(recorder, name="observer")
    host.register(_Enricher(RuntimeError("boom in enrich")), name="raiser")
    host.register(_Enricher({"kept": True}), name="fine")

    assert host.enrich_metadata(_event(), {}) == {"kept": True}
    assert len(recorder.reports) == 1
    report = recorder.reports[0]
    assert report["plugin"] == "raiser" and report["hook"] == "hidra_enrich_metadata"
    assert "boom in enrich" in report["error"] and "RuntimeError" in report["error"]


@pytest.mark.parametrize("result", [["not", "a", "mapping"], "text", 42])
def test_an_enrich_impl_returning_a_non_mapping_is_isolated_and_reported(result: Any) -> None:
    host = PluginHost()
    recorder = Recorder()
    host.register(recorder, name="observer")
    host.register(_Enricher(result), name="sloppy")
    host.register(_Enricher({"kept": True}), name="fine")

    assert host.enrich_metadata(_event(), {}) == {"kept": True}
    assert [(r["plugin"], r["hook"]) for r in recorder.reports] == [("sloppy", "hidra_enrich_metadata")]


def test_a_wrapper_on_a_run_time_hook_is_not_run_as_a_plain_impl() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def hidra_enrich_metadata(self, event: Any, metadata: Any) -> Any:
            result = yield
            return result

    host = PluginHost()
    recorder = Recorder()
    host.register(recorder, name="observer")
    host.register(Wrapper(), name="wrapper")
    host.register(_Enricher({"kept": True}), name="fine")

    assert host.enrich_metadata(_event(), {}) == {"kept": True}
    assert [r["plugin"] for r in recorder.reports] == ["wrapper"]


def test_a_raising_error_observer_does_not_hide_the_error(caplog: pytest.LogCaptureFixture) -> None:
    class BadObserver:
        @hookimpl
        def hidra_on_plugin_error(self, report: Any) -> None:
            raise RuntimeError("observer broke")

    host = PluginHost()
    recorder = Recorder()
    host.register(BadObserver(), name="bad-observer")
    host.register(recorder, name="observer")
    host.register(_Enricher(ValueError("enrich broke")), name="raiser")
    host.register(_Enricher({"kept": 1}), name="fine")

    with caplog.at_level(logging.ERROR, logger="hidra_core.host.plugins"):
        assert host.enrich_metadata(_event(), {}) == {"kept": 1}
    assert [r["plugin"] for r in recorder.reports] == ["raiser"]
    assert any("bad-observer" in r.getMessage() for r in caplog.records)


# --- the CLI, in process ------------------------------------------------------------------------------------


def test_cli_plugins_lists_fakes_with_failed_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def line_of(group: str, name: str, dist: str = "hidra-fake") -> str:
        found = [ln for ln in lines if ln.split()[:3] == [group, name, dist]]
        assert len(found) == 1, (group, name, lines)
        return found[0]

    assert line_of("hidra", GOOD).rstrip().endswith("ok")
    for name in BROKEN:
        assert "FAILED: " in line_of("hidra", name)
    assert "acme_sdk" in line_of("hidra", "hidra_fake_importerror")
    assert line_of("hidra.event_sources", "hidra_fake_ok").rstrip().endswith("ok")
    assert "FAILED: import failed" in line_of("hidra.event_sources", "hidra_fake_importerror")
    assert "FAILED: not a EventSource subclass" in line_of("hidra.event_sources", "hidra_fake_not_a_driver")
    assert "hidra-fake-dup" in line_of("hidra.event_sources", "hidra_fake_duplicate")
    assert "hidra-fake" in line_of("hidra.event_sources", "hidra_fake_duplicate", "hidra-fake-dup")
    assert line_of("hidra.event_sources", "inotify", "hidra-inotify").rstrip().endswith("ok")
