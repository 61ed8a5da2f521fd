"""A driver module whose import fails, as when a plugin's own dependency is missing."""
import hidra_fake_no_such_dependency  # noqa: F401  # NOTE: the failure is the point of this module

from hidra_core import EventSource


class BrokenEventSource(EventSource):  # pragma: no cover - never reached
    pass
