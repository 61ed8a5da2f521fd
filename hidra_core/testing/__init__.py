"""pytest support for HiDRA plugin authors: fixtures and contract test classes (the ``hidra`` pytest11 plugin).

Installing ``hidra-core`` activates the fixtures in every pytest run of the environment; nothing happens at import
time beyond defining them. Use them directly in a test, or subclass a contract class in a module named
``test_*.py`` under a ``Test*`` name::

    from hidra_core.testing import FetcherContract

    class TestMyFetcher(FetcherContract):
        driver_name = "my_fetcher"

        def make_event(self, tmp_path, name, data):
            ...

Fixtures: ``plugin_host``, ``register_plugin``, ``zmq_context``, ``socket``, ``bound_pair``, ``ipc_dir``,
``inproc_transport``, ``source_opener``.
Helpers: ``wait_until``, ``collect_events``, ``poll_until``. ``TreeSourceContract``: ``EventSourceContract`` for
sources that watch a directory tree. Contracts for in-memory data:
``StreamSourceContract`` (detector streams and other sources of frames and series) and ``SeriesWriterContract``.
"""
from __future__ import annotations

import pytest

# NOTE: must run before the submodules are imported, so their plain asserts report values like test code does.
pytest.register_assert_rewrite("hidra_core.testing.contracts", "hidra_core.testing.fixtures",
                               "hidra_core.testing.series_contracts")

from hidra_core.testing.contracts import (  # noqa: E402  (after the rewrite registration on purpose)
    EventSourceContract,
    FetcherContract,
    TransportContract,
    TreeSourceContract,
    WriterContract,
)
from hidra_core.testing.series_contracts import (  # noqa: E402
    SeriesWriterContract,
    StreamSourceContract,
    poll_until,
)
from hidra_core.testing.fixtures import (  # noqa: E402
    TrackingContext,
    bound_pair,
    collect_events,
    inproc_transport,
    ipc_dir,
    plugin_host,
    register_plugin,
    socket,
    source_opener,
    wait_until,
    zmq_context,
)

__all__ = [
    "EventSourceContract", "FetcherContract", "SeriesWriterContract", "StreamSourceContract", "TrackingContext",
    "TransportContract", "TreeSourceContract", "WriterContract", "bound_pair", "collect_events", "inproc_transport",
    "ipc_dir", "plugin_host", "poll_until", "register_plugin", "socket", "source_opener", "wait_until", "zmq_context",
]
