"""Contract test classes: subclass one per driver, and every rule of its role is checked against that driver.

A contract checks what the role's ABC promises (``hidra_core.interfaces``) and what every driver owes the kernel:
it is found by name through stevedore, and its ``config_class`` is frozen and refuses unknown keys. A subclass
sets ``driver_name`` and implements the hooks of its role (``make_config`` gives the options of the driver's
section, default none). To opt out of one rule, override that test and skip or xfail it with a reason.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import pytest
import zmq
from pydantic import ValidationError

from hidra_core.errors import ConfigError
from hidra_core.interfaces import Fetcher, FileStat, WriteTarget
from hidra_core.testing.fixtures import collect_events
from hidra_core.types import FileEvent

__all__ = ["EventSourceContract", "FetcherContract", "TransportContract", "TreeSourceContract", "WriterContract"]

_UNKNOWN_KEY = "hidra_contract_no_such_key"
_SECTIONS = {"event source": "sender.source.{}", "fetcher": "sender.fetcher.{}", "writer": "receiver.{}",
             "transport": "sender.transports.{}"}


def _pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that repeat only every 4093 bytes (a prime, so never in step with a chunk size):
    swapped, repeated or reused chunks show up as a mismatch."""
    block = bytes((i * 7 + seed) % 251 for i in range(4093))
    return (block * (size // len(block) + 1))[:size]


# NOTE: kernel modules beyond the records and ABCs are imported inside the tests: this module is loaded by every
# pytest run in the environment, which should not break because, say, the driver loader has a bug.


class _DriverContract:
    role: ClassVar[str] = ""
    #: entry-point name of the driver under test
    driver_name: ClassVar[str] = ""

    def make_config(self, tmp_path: Path) -> Mapping[str, Any]:
        """Options of the driver's config section used by every test."""
        return {}

    def driver_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {}

    @property
    def section(self) -> str:
        return _SECTIONS[self.role].format(self.driver_name)

    def build(self, tmp_path: Path, options: Mapping[str, Any] | None = None) -> Any:
        """The driver as the kernel builds it: loaded by name, options validated against its config model."""
        from hidra_core.host.kernel import create_driver

        assert self.driver_name, f"{type(self).__name__} must set driver_name"
        options = self.make_config(tmp_path) if options is None else options
        return create_driver(self.role, self.driver_name, options, "<contract test>", self.section,
                             **self.driver_kwargs(tmp_path))

    def test_driver_loads_by_name_through_stevedore(self) -> None:
        from hidra_core.host.drivers import ROLES, load_driver_class
        from hidra_core.host.plugins import entry_points_of

        group, base = ROLES[self.role]
        cls = load_driver_class(self.role, self.driver_name)
        assert issubclass(cls, base)
        eps = [ep for ep in entry_points_of(group) if ep.name == self.driver_name]
        assert len(eps) == 1, f"{group} must have exactly one {self.driver_name!r}: {[ep.value for ep in eps]}"
        assert eps[0].load() is cls

    def test_config_class_is_frozen_and_refuses_extra_keys(self, tmp_path: Path) -> None:
        from hidra_core.host.drivers import load_driver_class

        model = load_driver_class(self.role, self.driver_name).config_class
        assert model.model_config.get("frozen") is True, f"{model.__name__} must be frozen"
        assert model.model_config.get("extra") == "forbid", f"{model.__name__} must set extra='forbid'"
        config = model.model_validate(dict(self.make_config(tmp_path)))
        for name in type(config).model_fields:
            with pytest.raises(ValidationError):
                setattr(config, name, getattr(config, name))

    def test_unknown_key_is_refused_naming_section_and_key(self, tmp_path: Path) -> None:
        options = {**self.make_config(tmp_path), _UNKNOWN_KEY: 1}
        with pytest.raises(ConfigError) as info:
            self.build(tmp_path, options)
        assert f"{self.section}.{_UNKNOWN_KEY}" in str(info.value)


class EventSourceContract(_DriverContract):
    """Rules for ``hidra.event_sources`` drivers.

    Hooks: ``make_config(tmp_path)`` returns the source's options; ``produce(tmp_path, relative_path, filename)``
    makes the outside world cause exactly one event for that file (write it, send a notice, ...). It is called
    after ``open``. Set ``supports_subdirectories = False`` if the source cannot report nested paths.
    """

    role = "event source"
    supports_subdirectories: ClassVar[bool] = True
    #: how long a produced file may take to be reported
    timeout_s: ClassVar[float] = 5.0

    def make_config(self, tmp_path: Path) -> Mapping[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement make_config(tmp_path)")

    def produce(self, tmp_path: Path, relative_path: str, filename: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement produce(tmp_path, relative_path, filename)")

    @pytest.fixture
    def opened_source(self, tmp_path: Path, zmq_context: zmq.Context) -> Iterator[Any]:
        source = self.build(tmp_path)
        source.open(zmq_context)
        try:
            yield source
        finally:
            source.close()

    @staticmethod
    def check_names(event: FileEvent) -> None:
        """What the kernel relies on: a relative, ``/``-separated directory and a plain file name."""
        rel = event.relative_path
        assert isinstance(event, FileEvent) and isinstance(rel, str) and isinstance(event.filename, str)
        assert not rel.startswith("/") and not rel.endswith("/"), f"relative_path {rel!r}"
        assert "\\" not in rel, f"relative_path {rel!r} uses backslashes"
        assert rel == "" or all(p not in ("", ".", "..") for p in rel.split("/")), f"relative_path {rel!r}"
        assert event.filename not in ("", ".", "..") and "/" not in event.filename, f"filename {event.filename!r}"

    def test_default_fetcher_is_installed(self) -> None:
        from hidra_core.host.drivers import load_driver_class

        cls = load_driver_class(self.role, self.driver_name)
        assert issubclass(load_driver_class("fetcher", cls.default_fetcher), Fetcher)

    def test_produced_file_is_reported(self, tmp_path: Path, opened_source: Any) -> None:
        self.produce(tmp_path, "", "contract-1.dat")
        events = collect_events(opened_source, ["contract-1.dat"], self.timeout_s)
        event = next(e for e in events if e.file_id == "contract-1.dat")
        assert (event.relative_path, event.filename) == ("", "contract-1.dat")
        if opened_source.root is not None:
            assert event.source_path == opened_source.root
        for e in events:
            self.check_names(e)

    def test_nested_file_has_a_slash_separated_relative_path(self, tmp_path: Path, opened_source: Any) -> None:
        if not self.supports_subdirectories:
            pytest.skip(f"{self.driver_name} reports no subdirectories")
        self.produce(tmp_path, "run-7/scan 2", "frame_0001.cbf")
        events = collect_events(opened_source, ["run-7/scan 2/frame_0001.cbf"], self.timeout_s)
        assert {e.relative_path for e in events if e.filename == "frame_0001.cbf"} == {"run-7/scan 2"}
        for e in events:
            self.check_names(e)

    def test_poll_returns_within_its_timeout(self, opened_source: Any) -> None:
        for timeout_ms in (0, 200, 200):  # the first calls may still return start-up work
            start = time.monotonic()
            result = opened_source.poll(timeout_ms)
            assert isinstance(result, list)
            assert time.monotonic() - start < 5.0, f"poll({timeout_ms}) blocked far longer than its timeout"

    def test_close_releases_every_socket(self, tmp_path: Path, zmq_context: Any) -> None:
        before = set(zmq_context.open_sockets())
        source = self.build(tmp_path)
        source.open(zmq_context)
        source.poll(0)
        source.close()
        assert [s for s in zmq_context.open_sockets() if s not in before] == []


class TreeSourceContract(EventSourceContract):
    """``EventSourceContract`` for a source that watches a directory tree (options: ``TreeSourceConfig``): the tree
    is ``tmp_path / "src"``, and a produced file is written there. Extend ``make_config`` for further options."""

    def make_config(self, tmp_path: Path) -> Mapping[str, Any]:
        (tmp_path / "src").mkdir(exist_ok=True)
        return {"path": str(tmp_path / "src")}

    def file_content(self, filename: str) -> bytes:
        """What a produced file holds (override for sources that read it, e.g. an image header)."""
        return b"contract"

    def produce(self, tmp_path: Path, relative_path: str, filename: str) -> None:
        directory = tmp_path / "src" / relative_path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / filename).write_bytes(self.file_content(filename))


class FetcherContract(_DriverContract):
    """Rules for ``hidra.fetchers`` drivers.

    Hook: ``make_event(tmp_path, name, data)`` makes ``data`` available under ``name`` (replacing earlier data of
    that name) and returns the event a source would report for it. ``chunksize`` is what the tests ask for.
    """

    role = "fetcher"
    chunksize: ClassVar[int] = 1000

    def make_event(self, tmp_path: Path, name: str, data: bytes) -> FileEvent:
        raise NotImplementedError(f"{type(self).__name__} must implement make_event(tmp_path, name, data)")

    @pytest.fixture
    def fetcher(self, tmp_path: Path) -> Any:
        return self.build(tmp_path)

    _SIZES = {"empty": (0, 0), "one-byte": (0, 1), "chunk-minus-1": (1, -1), "one-chunk": (1, 0),
              "chunk-plus-1": (1, 1), "two-chunks": (2, 0), "three-and-a-half": (3, 0.5)}

    @pytest.mark.parametrize("shape", list(_SIZES))
    def test_chunks_have_exact_sizes(self, tmp_path: Path, fetcher: Any, shape: str) -> None:
        n, extra = self._SIZES[shape]
        cs = self.chunksize
        size = n * cs + (int(extra * cs) if isinstance(extra, float) else extra)
        data = _pattern(size)
        event = self.make_event(tmp_path, f"sized-{shape}.bin", data)
        stat = fetcher.stat(event)
        assert isinstance(stat, FileStat) and stat.size == size
        chunks = list(fetcher.chunks(event, stat, cs))  # all kept first: a reused buffer would show up below
        lengths = [memoryview(c).nbytes for c in chunks]
        want = [0] if size == 0 else [cs] * (size // cs) + ([size % cs] if size % cs else [])
        assert lengths == want
        assert b"".join(bytes(memoryview(c)) for c in chunks) == data

    def test_stat_reports_size_and_times_in_ns(self, tmp_path: Path, fetcher: Any) -> None:
        event = self.make_event(tmp_path, "stat.bin", b"x" * 123)
        stat = fetcher.stat(event)
        assert stat is not None and stat.size == 123
        assert isinstance(stat.mtime_ns, int) and stat.mtime_ns > 10**18  # nanoseconds since 1970, after 2001
        assert isinstance(stat.ctime_ns, int)

    @pytest.mark.parametrize("change", ["grows", "shrinks"])
    def test_size_change_after_stat_raises_oserror(self, tmp_path: Path, fetcher: Any, change: str) -> None:
        cs = self.chunksize
        event = self.make_event(tmp_path, "changing.bin", _pattern(2 * cs + 10))
        stat = fetcher.stat(event)
        self.make_event(tmp_path, "changing.bin", _pattern(3 * cs if change == "grows" else cs // 2, seed=1))
        with pytest.raises(OSError):
            list(fetcher.chunks(event, stat, cs))

    def test_stat_of_removed_data_is_none(self, tmp_path: Path, fetcher: Any) -> None:
        event = self.make_event(tmp_path, "gone.bin", b"abc")
        fetcher.remove(event, fetcher.stat(event))
        assert fetcher.stat(event) is None

    def test_remove_is_idempotent(self, tmp_path: Path, fetcher: Any) -> None:
        # NOTE: after a crash the sender may remove a file again whose removal it had not recorded yet.
        event = self.make_event(tmp_path, "twice.bin", b"abc")
        stat = fetcher.stat(event)
        fetcher.remove(event, stat)
        fetcher.remove(event, stat)
        assert fetcher.stat(event) is None

    def test_remove_keeps_data_replaced_after_the_stat(self, tmp_path: Path, fetcher: Any) -> None:
        from hidra_core.interfaces import SourceChanged

        event = self.make_event(tmp_path, "replaced.bin", _pattern(100))
        sent = fetcher.stat(event)
        self.make_event(tmp_path, "replaced.bin", _pattern(150, seed=1))
        with pytest.raises(SourceChanged):
            fetcher.remove(event, sent)
        now = fetcher.stat(event)
        assert now is not None and now.size == 150, "a version that was never sent was removed"

    def test_complete_data_is_not_busy(self, tmp_path: Path, fetcher: Any) -> None:
        event = self.make_event(tmp_path, "complete.bin", b"x" * 10)
        assert fetcher.busy(event, fetcher.stat(event)) is False

    def test_identity_is_text_that_differs_between_versions(self, tmp_path: Path, fetcher: Any) -> None:
        event = self.make_event(tmp_path, "versions.bin", _pattern(10))
        first = fetcher.stat(event)
        self.make_event(tmp_path, "versions.bin", _pattern(20, seed=1))
        second = fetcher.stat(event)
        assert isinstance(first.identity, str) and first.identity
        assert first.identity != second.identity


class WriterContract(_DriverContract):
    """Rules for ``hidra.writers`` drivers.

    Hooks (defaults fit writers of plain files): ``read_back(root, relative_name)`` returns the stored bytes or
    ``None`` if not visible; ``stored_files(root)`` lists every file below the target root.
    """

    role = "writer"

    def target_root(self, tmp_path: Path) -> Path:
        root = tmp_path / "target"
        root.mkdir(exist_ok=True)
        return root

    def driver_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"target": str(self.target_root(tmp_path))}

    def read_back(self, root: Path, relative_name: str) -> bytes | None:
        path = root / relative_name
        return path.read_bytes() if path.is_file() else None

    def stored_files(self, root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

    @pytest.fixture
    def writer(self, tmp_path: Path) -> Any:
        return self.build(tmp_path)

    @staticmethod
    def item(root: Path, relative_name: str, data: bytes = b"", mtime: float = 1_600_000_000.25) -> WriteTarget:
        *parts, filename = relative_name.split("/")
        return WriteTarget(str(root), tuple(parts), filename, {"filesize": len(data), "file_mod_time": mtime})

    @staticmethod
    def write_all(writer: Any, item: WriteTarget, data: bytes, pieces: int = 3) -> Any:
        """open, write ``data`` in pieces of each buffer type a receiver may hand over, close; the handle."""
        handle = writer.open(item)
        step = max(1, -(-len(data) // pieces))
        kinds = (bytes, bytearray, memoryview)
        for n, offset in enumerate(range(0, len(data), step)):
            writer.write(handle, kinds[n % 3](data[offset:offset + step]))
        writer.close(handle)
        return handle

    def test_commit_makes_the_file_visible_and_byte_identical(self, tmp_path: Path, writer: Any) -> None:
        root = self.target_root(tmp_path)
        data = _pattern(100_000)
        handle = writer.open(self.item(root, "run1/a.dat", data))
        writer.write(handle, data[:50_000])
        while_writing = self.read_back(root, "run1/a.dat")
        writer.write(handle, memoryview(data)[50_000:])
        writer.close(handle)
        before_commit = self.read_back(root, "run1/a.dat")
        writer.commit([handle])  # the asserts come last, so a failing writer still closes its file
        assert while_writing is None, "visible under its final name while being written"
        assert before_commit is None, "visible under its final name before commit"
        assert self.read_back(root, "run1/a.dat") == data
        assert self.stored_files(root) == ["run1/a.dat"], "something besides the file is left in the target"

    def test_several_files_commit_in_one_batch(self, tmp_path: Path, writer: Any) -> None:
        root = self.target_root(tmp_path)
        files = {f"run{n % 3}/sub/f{n}.bin": _pattern(n * 997, seed=n) for n in range(8)}  # f0 is empty
        handles = [self.write_all(writer, self.item(root, name, data), data) for name, data in files.items()]
        assert all(self.read_back(root, name) is None for name in files)
        writer.commit(handles)
        assert {name: self.read_back(root, name) for name in files} == files
        assert self.stored_files(root) == sorted(files)

    @pytest.mark.parametrize("when", ["while-writing", "after-close"])
    def test_abort_leaves_nothing_behind(self, tmp_path: Path, writer: Any, when: str) -> None:
        root = self.target_root(tmp_path)
        handle = writer.open(self.item(root, "run1/aborted.dat", b"x" * 5000))
        writer.write(handle, b"x" * 5000)
        if when == "after-close":
            writer.close(handle)
        writer.abort(handle)
        assert self.stored_files(root) == []
        writer.abort(handle)  # the ABC: abort must not raise for a missing temp file

    def test_cleanup_spares_files_of_the_running_writer(self, tmp_path: Path, writer: Any) -> None:
        # NOTE: the receiver runs cleanup(start time) in a background thread while files already arrive; a file
        # closed but not yet committed (with the source's old mtime) belongs to this process and must survive.
        root = self.target_root(tmp_path)
        started = time.time()
        data = _pattern(3000)
        handle = self.write_all(writer, self.item(root, "early.dat", data, mtime=started - 86400), data)
        writer.cleanup(started)
        writer.commit([handle])
        assert self.read_back(root, "early.dat") == data


class TransportContract(_DriverContract):
    """Rules for ``hidra.transports`` drivers (``driver_name`` is the URL scheme).

    Hooks: ``bind_endpoint(directory)`` an endpoint to bind (``directory`` is short enough for socket files;
    default ``tcp://127.0.0.1:0``, a file for ``ipc``, a unique ``inproc`` name); ``invalid_endpoint(directory)``
    one that must be refused.
    """

    role = "transport"
    hwm: ClassVar[int] = 7

    def bind_endpoint(self, directory: Path) -> str:
        defaults = {"tcp": "tcp://127.0.0.1:0", "ipc": f"ipc://{directory}/{uuid.uuid4().hex[:12]}.sock",
                    "inproc": f"inproc://contract-{uuid.uuid4().hex}"}
        if self.driver_name not in defaults:
            raise NotImplementedError(f"{type(self).__name__} must implement bind_endpoint(directory)")
        return defaults[self.driver_name]

    def invalid_endpoint(self, directory: Path) -> str:
        defaults = {"tcp": "tcp://127.0.0.1:notaport", "ipc": f"ipc://{directory}/{'x' * 200}.sock",
                    "inproc": "inproc://"}
        return defaults.get(self.driver_name, f"{self.driver_name}://")

    @pytest.fixture
    def transport(self, tmp_path: Path) -> Any:
        return self.build(tmp_path)

    def test_bound_endpoint_is_resolved(self, transport: Any, zmq_context: Any, ipc_dir: Path) -> None:
        requested = self.bind_endpoint(ipc_dir)
        sock = transport.open_socket(zmq_context, zmq.PULL, requested, bind=True, hwm=self.hwm)
        try:
            endpoint = transport.endpoint_of(sock)
        finally:
            sock.close()
        assert endpoint.partition("://")[0] == requested.partition("://")[0], endpoint
        assert not endpoint.endswith((":0", ":*")), f"{endpoint} is not connectable"

    @pytest.mark.parametrize("bound_type", [zmq.PULL, zmq.PUSH], ids=["pull-binds", "push-binds"])
    def test_push_pull_roundtrip_with_linger_and_hwm(self, transport: Any, zmq_context: Any, ipc_dir: Path,
                                                     bound_type: int) -> None:
        other = zmq.PUSH if bound_type == zmq.PULL else zmq.PULL
        bound = transport.open_socket(zmq_context, bound_type, self.bind_endpoint(ipc_dir), bind=True, hwm=self.hwm)
        try:
            connected = transport.open_socket(zmq_context, other, transport.endpoint_of(bound), bind=False,
                                              hwm=self.hwm)
            push, pull = (connected, bound) if bound_type == zmq.PULL else (bound, connected)
            try:
                push.sndtimeo = 5000  # a bound PUSH waits for its peer; fail instead of hanging
                big = _pattern(1 << 20)
                for n in range(3):
                    push.send_multipart([b'{"n": %d}' % n, big], copy=False)
                got = []
                for _ in range(3):
                    assert pull.poll(5000), "no message within 5 s"
                    got.append(pull.recv_multipart())
                assert got == [[b'{"n": %d}' % n, big] for n in range(3)]
                assert push.linger != -1 and pull.linger != -1, "linger must be explicit, never infinite"
                assert (push.sndhwm, pull.rcvhwm) == (self.hwm, self.hwm)
            finally:
                connected.close()
        finally:
            bound.close()

    @pytest.mark.parametrize("bind", [True, False], ids=["bind", "connect"])
    def test_invalid_endpoint_raises_and_leaves_no_socket(self, transport: Any, zmq_context: Any, ipc_dir: Path,
                                                          bind: bool) -> None:
        before = set(zmq_context.open_sockets())
        with pytest.raises((ValueError, OSError)):
            transport.open_socket(zmq_context, zmq.PUSH, self.invalid_endpoint(ipc_dir), bind=bind, hwm=self.hwm)
        assert [s for s in zmq_context.open_sockets() if s not in before] == []

