"""The contracts and fixtures of ``hidra_core.testing`` catch the bugs they name.

One inner pytest session (``pytester``) runs every contract against a correct driver and against drivers with
one deliberate bug each, installed through a throw-away distribution on ``sys.path``; each bug must fail the
contract test that names it, and the correct drivers must pass everything.
"""
from __future__ import annotations

import textwrap
from typing import Any

import pytest
from stevedore import ExtensionManager

pytest_plugins = ["pytester"]

DRIVERS = '''
from __future__ import annotations

import os

import zmq
from pydantic import BaseModel, ConfigDict

from hidra_core import EventSource, Fetcher, FileEvent, FileStat, SourceChanged, Transport, Writer


class PathConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str


class LaxConfig(BaseModel):
    model_config = ConfigDict(extra="allow")


def _path(event):
    return os.path.join(event.source_path, *[p for p in event.relative_path.split("/") if p], event.filename)


class GoodFetcher(Fetcher):
    def stat(self, event):
        try:
            st = os.stat(_path(event))
        except FileNotFoundError:
            return None
        return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def chunks(self, event, stat, chunksize):
        with open(_path(event), "rb") as f:
            self.check_size(f, stat)
            if stat.size == 0:
                yield from self.empty()
            yield from self.read(f, chunksize)

    def check_size(self, f, stat):
        if os.fstat(f.fileno()).st_size != stat.size:
            raise OSError("size changed")

    def empty(self):
        yield b""

    def read(self, f, chunksize):
        while chunk := f.read(chunksize):
            yield bytearray(chunk)

    def remove(self, event, stat):
        self.check_version(event, stat)
        self.unlink(event)

    def check_version(self, event, stat):
        now = self.stat(event)
        if now is not None and now.identity != stat.identity:
            raise SourceChanged("changed")

    def unlink(self, event):
        try:
            os.unlink(_path(event))
        except FileNotFoundError:
            pass


class ReusingFetcher(GoodFetcher):
    def read(self, f, chunksize):
        buf = bytearray(chunksize)
        while n := f.readinto(buf):
            yield memoryview(buf)[:n]


class NoEmptyChunkFetcher(GoodFetcher):
    def empty(self):
        return iter(())


class NoSizeCheckFetcher(GoodFetcher):
    def check_size(self, f, stat):
        pass


class StrictRemoveFetcher(GoodFetcher):
    def unlink(self, event):
        os.unlink(_path(event))


class UncheckedRemoveFetcher(GoodFetcher):
    def check_version(self, event, stat):
        pass


class LaxFetcher(GoodFetcher):
    config_class = LaxConfig


class GoodSource(EventSource):
    """Scans its directory on every poll; waits on an idle socket it owns, to have one to close."""

    config_class = PathConfig

    @property
    def root(self):
        return self.config.path

    def open(self, context):
        self._seen = set()
        self._idle = context.socket(zmq.PAIR)
        self._idle.linger = 0

    def poll(self, timeout_ms):
        events = self._scan()
        if not events and timeout_ms:
            self._idle.poll(min(timeout_ms, 20))
            events = self._scan()
        return events

    def close(self):
        self._idle.close()

    def _scan(self):
        events = []
        for directory, _dirs, files in os.walk(self.config.path):
            rel = os.path.relpath(directory, self.config.path).replace(os.sep, "/")
            rel = "" if rel == "." else rel
            for name in files:
                if (rel, name) not in self._seen:
                    self._seen.add((rel, name))
                    events.append(self.event(rel, name))
        return events

    def event(self, rel, name):
        return FileEvent(self.config.path, rel, name)


class LeakySource(GoodSource):
    def close(self):
        pass


class SlashSource(GoodSource):
    def event(self, rel, name):
        return FileEvent(self.config.path, "/" + rel if rel else rel, name)


class GoodWriter(Writer):
    def open(self, item):
        directory = os.path.join(self.target, *item.relative_parts)
        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, item.filename)
        temp = self.temp_name(final)
        return {"file": open(temp, "wb"), "temp": temp, "final": final}

    def temp_name(self, final):
        return final + ".part"

    def write(self, handle, data):
        handle["file"].write(data)

    def close(self, handle):
        handle["file"].close()

    def commit(self, handles):
        for h in handles:
            if h["temp"] != h["final"]:
                os.rename(h["temp"], h["final"])

    def abort(self, handle):
        handle["file"].close()
        try:
            os.unlink(handle["temp"])
        except FileNotFoundError:
            pass


class EagerWriter(GoodWriter):
    def temp_name(self, final):
        return final


class LeakyAbortWriter(GoodWriter):
    def abort(self, handle):
        handle["file"].close()


class GoodTransport(Transport):
    def open_socket(self, context, socket_type, endpoint, *, bind, hwm):
        sock = context.socket(socket_type)
        try:
            self.configure(sock, hwm)
            if bind:
                sock.bind(endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint)
            else:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.on_error(sock)
            raise OSError(exc.errno, str(exc)) from None
        return sock

    def configure(self, sock, hwm):
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = hwm

    def on_error(self, sock):
        sock.close(0)


class NoHwmTransport(GoodTransport):
    def configure(self, sock, hwm):
        sock.linger = 0


class LeakyTransport(GoodTransport):
    def on_error(self, sock):
        pass
'''

ENTRY_POINTS = '''
[hidra.fetchers]
good_fetcher = broken_drivers:GoodFetcher
reusing_fetcher = broken_drivers:ReusingFetcher
no_empty_chunk_fetcher = broken_drivers:NoEmptyChunkFetcher
no_size_check_fetcher = broken_drivers:NoSizeCheckFetcher
strict_remove_fetcher = broken_drivers:StrictRemoveFetcher
unchecked_remove_fetcher = broken_drivers:UncheckedRemoveFetcher
lax_fetcher = broken_drivers:LaxFetcher

[hidra.event_sources]
good_source = broken_drivers:GoodSource
leaky_source = broken_drivers:LeakySource
slash_source = broken_drivers:SlashSource

[hidra.writers]
good_writer = broken_drivers:GoodWriter
eager_writer = broken_drivers:EagerWriter
leaky_abort_writer = broken_drivers:LeakyAbortWriter

[hidra.transports]
good_transport = broken_drivers:GoodTransport
no_hwm_transport = broken_drivers:NoHwmTransport
leaky_transport = broken_drivers:LeakyTransport
'''

CONTRACT_TESTS = '''
import pytest
from hidra_core import FileEvent
from hidra_core.testing import EventSourceContract, FetcherContract, TransportContract, WriterContract


class Fetch(FetcherContract):
    def make_event(self, tmp_path, name, data):
        (tmp_path / name).write_bytes(data)
        return FileEvent(str(tmp_path), "", name)


class TestGoodFetcher(Fetch):
    driver_name = "good_fetcher"


class TestReusingFetcher(Fetch):
    driver_name = "reusing_fetcher"


class TestNoEmptyChunkFetcher(Fetch):
    driver_name = "no_empty_chunk_fetcher"


class TestNoSizeCheckFetcher(Fetch):
    driver_name = "no_size_check_fetcher"


class TestStrictRemoveFetcher(Fetch):
    driver_name = "strict_remove_fetcher"


class TestUncheckedRemoveFetcher(Fetch):
    driver_name = "unchecked_remove_fetcher"


class TestLaxFetcher(Fetch):
    driver_name = "lax_fetcher"


class Source(EventSourceContract):
    def make_config(self, tmp_path):
        (tmp_path / "src").mkdir(exist_ok=True)
        return {"path": str(tmp_path / "src")}

    def produce(self, tmp_path, relative_path, filename):
        directory = tmp_path / "src" / relative_path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / filename).write_bytes(b"x")


class TestGoodSource(Source):
    driver_name = "good_source"


class TestLeakySource(Source):
    driver_name = "leaky_source"


class TestSlashSource(Source):
    driver_name = "slash_source"


class TestGoodWriter(WriterContract):
    driver_name = "good_writer"


class TestEagerWriter(WriterContract):
    driver_name = "eager_writer"


class TestLeakyAbortWriter(WriterContract):
    driver_name = "leaky_abort_writer"


class Tcp(TransportContract):
    def bind_endpoint(self, directory):
        return "tcp://127.0.0.1:0"

    def invalid_endpoint(self, directory):
        return "tcp://127.0.0.1:notaport"


class TestGoodTransport(Tcp):
    driver_name = "good_transport"


class TestNoHwmTransport(Tcp):
    driver_name = "no_hwm_transport"


class TestLeakyTransport(Tcp):
    driver_name = "leaky_transport"
'''

FIXTURE_TESTS = '''
import pytest
import zmq

from hidra_core import hookimpl
from hidra_core.host.plugins import PluginHost


@pytest.fixture(scope="module")
def plugin_host():
    return PluginHost()


class Plugin:
    @hookimpl
    def hidra_enrich_metadata(self, event):
        return {"x": 1}


def test_registers(plugin_host, register_plugin):
    register_plugin(Plugin(), name="p")
    assert plugin_host.manager.get_plugin("p") is not None


def test_and_unregisters_after_the_test(plugin_host):
    assert plugin_host.manager.get_plugins() == set()


def test_leaves_a_socket_open(zmq_context):
    zmq_context.socket(zmq.PUSH)


@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
def test_bound_pair_round_trip(bound_pair, transport, tmp_path, ipc_dir):
    bound, connected = bound_pair(zmq.PULL, zmq.PUSH, transport)
    connected.send(b"hello")
    assert bound.poll(5000) and bound.recv() == b"hello"
    assert bound.linger == 0 and connected.linger == 0
    if transport == "ipc":
        assert len(str(tmp_path)) > 107 and len(str(ipc_dir)) <= 80


def test_inproc_transport(inproc_transport, zmq_context):
    pull = inproc_transport.open_socket(zmq_context, zmq.PULL, "inproc://fixture", bind=True, hwm=3)
    push = inproc_transport.open_socket(zmq_context, zmq.PUSH, "inproc://fixture", bind=False, hwm=3)
    push.send(b"x")
    assert pull.poll(5000) and pull.recv() == b"x"
    push.close()
    pull.close()
'''

#: contract tests each deliberately broken driver must fail (every other test of it must pass)
MUST_FAIL = {
    "TestReusingFetcher": {"test_chunks_have_exact_sizes[chunk-plus-1]", "test_chunks_have_exact_sizes[two-chunks]",
                           "test_chunks_have_exact_sizes[three-and-a-half]"},
    "TestNoEmptyChunkFetcher": {"test_chunks_have_exact_sizes[empty]"},
    "TestNoSizeCheckFetcher": {"test_size_change_after_stat_raises_oserror[grows]",
                               "test_size_change_after_stat_raises_oserror[shrinks]"},
    "TestStrictRemoveFetcher": {"test_remove_is_idempotent"},
    "TestUncheckedRemoveFetcher": {"test_remove_keeps_data_replaced_after_the_stat"},
    "TestLaxFetcher": {"test_config_class_is_frozen_and_refuses_extra_keys",
                       "test_unknown_key_is_refused_naming_section_and_key"},
    "TestLeakySource": {"test_close_releases_every_socket"},
    "TestSlashSource": {"test_nested_file_has_a_slash_separated_relative_path"},
    "TestEagerWriter": {"test_commit_makes_the_file_visible_and_byte_identical",
                        "test_several_files_commit_in_one_batch"},
    "TestLeakyAbortWriter": {"test_abort_leaves_nothing_behind[while-writing]",
                             "test_abort_leaves_nothing_behind[after-close]"},
    "TestNoHwmTransport": {"test_push_pull_roundtrip_with_linger_and_hwm[pull-binds]",
                           "test_push_pull_roundtrip_with_linger_and_hwm[push-binds]"},
    "TestLeakyTransport": {"test_invalid_endpoint_raises_and_leaves_no_socket[bind]",
                           "test_invalid_endpoint_raises_and_leaves_no_socket[connect]"},
}


_SESSION: dict[str, dict[str, Any]] = {}


@pytest.fixture
def reports(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """``{nodeid: {phase: report}}`` of one inner session over every contract and fixture test."""
    # NOTE: pytester is function-scoped; the inner session is run once and shared by the tests below.
    if _SESSION:
        return _SESSION
    dist = pytester.mkdir("hidra_broken_drivers-0.1.dist-info")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hidra-broken-drivers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    pytester.makepyfile(broken_drivers=DRIVERS, test_contracts=CONTRACT_TESTS, test_fixtures=FIXTURE_TESTS)
    pytester.syspathinsert()
    # NOTE: stevedore caches each group's entry points per process; let it see the throw-away distribution.
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})
    # A long base directory makes tmp_path too long for a unix socket path, so ipc_dir must find a shorter one.
    basetemp = pytester.path / ("long-base-temp-" + "x" * 100)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "--basetemp", str(basetemp))
    for report in recorder.getreports("pytest_runtest_logreport"):
        _SESSION.setdefault(report.nodeid, {})[report.when] = report
    return _SESSION


def _calls(reports: dict[str, dict[str, Any]], cls: str) -> dict[str, str]:
    prefix = f"test_contracts.py::{cls}::"
    return {node[len(prefix):]: phases["call"].outcome for node, phases in reports.items()
            if node.startswith(prefix) and "call" in phases}


def test_contracts_pass_correct_drivers_and_fail_each_bug_where_named(reports: dict[str, dict[str, Any]]) -> None:
    for cls in ("TestGoodFetcher", "TestGoodSource", "TestGoodWriter", "TestGoodTransport", *MUST_FAIL):
        calls = _calls(reports, cls)
        assert len(calls) >= 5, f"{cls} ran only {sorted(calls)}"
        failed = {name for name, outcome in calls.items() if outcome == "failed"}
        assert failed == MUST_FAIL.get(cls, set()), cls


def test_zmq_context_fails_a_test_that_leaves_a_socket_open(reports: dict[str, dict[str, Any]]) -> None:
    teardown = reports["test_fixtures.py::test_leaves_a_socket_open"]["teardown"]
    assert teardown.failed and "1 socket(s) left open: PUSH" in str(teardown.longrepr)
    leaky = [phases["teardown"] for node, phases in reports.items() if node.startswith("test_contracts.py::TestLeaky")
             and "teardown" in phases and phases["teardown"].failed]
    assert leaky, "a source that never closes its socket must also fail at teardown"
    good = [node for node, phases in reports.items() if "Good" in node and phases["teardown"].failed]
    assert good == []


def test_fixtures_work_and_clean_up(reports: dict[str, dict[str, Any]]) -> None:
    outcomes = {node.split("::", 1)[1]: phases["call"].outcome for node, phases in reports.items()
                if node.startswith("test_fixtures.py::") and "call" in phases}
    assert outcomes == {
        "test_registers": "passed", "test_and_unregisters_after_the_test": "passed",
        "test_leaves_a_socket_open": "passed", "test_bound_pair_round_trip[tcp]": "passed",
        "test_bound_pair_round_trip[ipc]": "passed", "test_bound_pair_round_trip[inproc]": "passed",
        "test_inproc_transport": "passed"}
