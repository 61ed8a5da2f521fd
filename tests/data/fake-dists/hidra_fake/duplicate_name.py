"""One of two distributions exporting the driver name ``hidra_fake_duplicate`` (see hidra_fake_dup)."""
from hidra_fake.ok import FakeEventSource


class DuplicateEventSource(FakeEventSource):
    pass
