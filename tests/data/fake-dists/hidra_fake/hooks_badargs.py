"""An invalid hook plugin: its implementation asks for an argument the spec does not have."""
from hidra_core import hookimpl


@hookimpl
def hidra_enrich_metadata(event, metadata, no_such_argument):  # noqa: ANN001
    return {"fake_badargs": True}  # pragma: no cover - must never be called
