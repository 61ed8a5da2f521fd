from hidra_fake.ok import FakeEventSource


class OtherDuplicateEventSource(FakeEventSource):
    pass
