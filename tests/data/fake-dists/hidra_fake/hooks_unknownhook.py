"""An invalid hook plugin: it implements a hook that no spec defines (a typo, or a hook from a newer kernel)."""
from hidra_core import hookimpl


@hookimpl
def hidra_enrich_metadata(event, metadata):  # noqa: ANN001
    return {"fake_unknownhook": True}  # pragma: no cover - the plugin must be refused as a whole


@hookimpl
def hidra_nonexistent(kernel):  # noqa: ANN001
    pass  # pragma: no cover
