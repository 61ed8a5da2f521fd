"""The fixtures of the ``hidra`` pytest plugin, and waiting helpers that poll with a deadline instead of sleeping."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import pytest
import zmq

if TYPE_CHECKING:  # pragma: no cover
    from hidra_core.interfaces import EventSource, Transport
    from hidra_core.host.plugins import PluginHost
    from hidra_core.types import FileEvent

__all__ = [
    "TrackingContext", "bound_pair", "collect_events", "inproc_transport", "ipc_dir", "plugin_host",
    "register_plugin", "socket", "wait_until", "zmq_context",
]

T = TypeVar("T")

#: seconds the context may take to terminate at teardown before the test fails
TERM_TIMEOUT_S = 5.0
#: sockaddr_un.sun_path is 108 bytes on Linux; keep socket paths well below, with room for a file name
_IPC_DIR_MAX = 80


class TrackingContext(zmq.Context):
    """A ``zmq.Context`` that remembers every socket made from it, so a test can prove they were all closed."""

    # NOTE: pyzmq treats unknown attribute names as default socket options; names declared on the class are
    # stored as plain attributes instead.
    _hidra_sockets: list[zmq.Socket] = None  # type: ignore[assignment]
    _hidra_lock: threading.Lock = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hidra_sockets = []
        self._hidra_lock = threading.Lock()

    def socket(self, socket_type: int, *args: Any, **kwargs: Any) -> zmq.Socket:
        sock = super().socket(socket_type, *args, **kwargs)
        with self._hidra_lock:
            self._hidra_sockets.append(sock)
        return sock

    def open_sockets(self) -> list[zmq.Socket]:
        """Sockets made from this context (by any thread) that are not closed yet."""
        with self._hidra_lock:
            return [s for s in self._hidra_sockets if not s.closed]


def _describe(sock: zmq.Socket) -> str:
    try:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or "unbound"
        return f"{zmq.SocketType(int(sock.type)).name} ({endpoint})"
    except zmq.ZMQError:
        return repr(sock)


@pytest.fixture
def zmq_context() -> Iterator[TrackingContext]:
    """One ZeroMQ context per test, terminated (with a timeout) at teardown.

    Teardown fails the test if a socket made from the context is still open (sockets of the ``socket`` and
    ``bound_pair`` fixtures are closed before), or if the context does not terminate within 5 s.
    """
    ctx = TrackingContext()
    yield ctx
    leaked = ctx.open_sockets()
    names = [_describe(s) for s in leaked]
    for sock in leaked:
        sock.close(linger=0)  # so term() below can finish, and the next test starts clean
    terminator = threading.Thread(target=ctx.term, name="hidra-zmq-term", daemon=True)
    terminator.start()
    terminator.join(TERM_TIMEOUT_S)
    problems = [f"{len(leaked)} socket(s) left open: {', '.join(names)}"] if leaked else []
    if terminator.is_alive():
        problems.append(f"the context did not terminate within {TERM_TIMEOUT_S} s")
    if problems:
        pytest.fail("ZeroMQ hygiene: " + "; ".join(problems) + " (close every socket you create)", pytrace=False)


@pytest.fixture
def socket(zmq_context: TrackingContext) -> Iterator[Callable[..., zmq.Socket]]:
    """Factory ``socket(zmq.PUSH, hwm=1000)``: a socket of ``zmq_context`` with linger 0, closed at teardown."""
    made: list[zmq.Socket] = []

    def make(socket_type: int, *, hwm: int = 1000) -> zmq.Socket:
        sock = zmq_context.socket(socket_type)
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def ipc_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for ``ipc://`` socket files: ``tmp_path`` when its path is short enough, else a short temp dir."""
    # NOTE: tmp_path includes the test name and easily exceeds the 107 bytes a unix socket path may have.
    if len(str(tmp_path)) <= _IPC_DIR_MAX:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="hidra-ipc-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def bound_pair(socket: Callable[..., zmq.Socket], ipc_dir: Path) -> Callable[..., tuple[zmq.Socket, zmq.Socket]]:
    """Factory ``bound_pair(zmq.PUSH, zmq.PULL, transport="tcp", hwm=1000)`` -> ``(bound, connected)``.

    ``tcp`` binds a random free port on 127.0.0.1 (never a fixed port), ``ipc`` a socket file in ``ipc_dir``,
    ``inproc`` a unique name. Both sockets come from the ``socket`` fixture; the endpoint is
    ``bound.last_endpoint``.
    """

    def make(bound_type: int, connected_type: int, transport: str = "tcp", *,
             hwm: int = 1000) -> tuple[zmq.Socket, zmq.Socket]:
        bound = socket(bound_type, hwm=hwm)
        connected = socket(connected_type, hwm=hwm)
        if transport == "tcp":
            endpoint = f"tcp://127.0.0.1:{bound.bind_to_random_port('tcp://127.0.0.1')}"
        elif transport == "ipc":
            endpoint = f"ipc://{ipc_dir / uuid.uuid4().hex[:12]}.sock"
            bound.bind(endpoint)
        elif transport == "inproc":
            endpoint = f"inproc://hidra-test-{uuid.uuid4().hex}"
            bound.bind(endpoint)
        else:
            raise ValueError(f"transport must be 'tcp', 'ipc' or 'inproc', not {transport!r}")
        connected.connect(endpoint)
        return bound, connected

    return make


@pytest.fixture
def inproc_transport() -> Transport:
    """The installed ``inproc`` transport driver, built with its default config as the kernel would build it."""
    from hidra_core.host.kernel import create_driver

    return create_driver("transport", "inproc", {}, "<hidra_core.testing>", "transports.inproc")


@pytest.fixture
def source_opener() -> Iterator[Callable[..., EventSource]]:
    """``source_opener(kind, path, **options)``: an opened event source of entry point ``kind`` watching ``path``
    (built as the sender builds it, options checked by its model); every one is closed after the test."""
    from hidra_core.host.kernel import create_driver

    opened: list[EventSource] = []

    def make(kind: str, path: Path | str, **options: Any) -> EventSource:
        source = create_driver("event source", kind, {"path": str(path), **options}, "<test>",
                               f"sender.source.{kind}")
        source.open(None)  # NOTE: file sources need no ZeroMQ context
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


@pytest.fixture
def plugin_host() -> PluginHost:
    """A fresh ``PluginHost`` with the hook specs and no entry points loaded (``load_entry_points()`` adds them)."""
    from hidra_core.host.plugins import PluginHost

    return PluginHost()


@pytest.fixture
def register_plugin(plugin_host: PluginHost) -> Iterator[Callable[..., object]]:
    """``register_plugin(obj, name=None)`` registers ``obj`` with ``plugin_host`` and returns it; unregistered
    after the test."""
    registered: list[object] = []

    def register(plugin: object, name: str | None = None) -> object:
        plugin_host.register(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in reversed(registered):
        if plugin_host.manager.is_registered(plugin):
            plugin_host.manager.unregister(plugin)


def wait_until(predicate: Callable[[], T], timeout_s: float = 30.0, *, what: str = "the condition",
               interval_s: float = 0.005) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; ``AssertionError`` after ``timeout_s``.

    A predicate that blocks by itself (``sock.poll(50)``) can pass ``interval_s=0``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        if interval_s:
            time.sleep(interval_s)


def collect_events(source: EventSource, expected: Iterable[str], timeout_s: float = 30.0,
                   poll_ms: int = 50) -> list[FileEvent]:
    """Poll ``source`` until every file id in ``expected`` was reported; return every event seen, in order.

    ``AssertionError`` names the ids still missing after ``timeout_s``. Events are returned as reported,
    duplicates included (sources may report a file twice; the sender's ledger deduplicates).
    """
    missing = set(expected)
    events: list[FileEvent] = []
    deadline = time.monotonic() + timeout_s
    while missing:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            seen = sorted({e.file_id for e in events})
            raise AssertionError(f"not reported within {timeout_s} s: {sorted(missing)} (reported: {seen})")
        batch = source.poll(min(poll_ms, left_ms))
        events.extend(batch)
        missing.difference_update(e.file_id for e in batch)
    return events
