"""The writing request of databuffer.md §4: three fields carried as one bsread message (decoded with ``bsread``)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from bsread.handlers.compact import Handler

log = logging.getLogger(__name__)

__all__ = ["REQUEST_CHANNELS", "RequestError", "WriteRequest", "decode_message"]

# NOTE: the data header the broker sends (§4): two strings and a float64, in this order.
REQUEST_CHANNELS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("data_api_request", {"type": "string", "shape": [1]}),
    ("parameters", {"type": "string", "shape": [1]}),
    ("timestamp", {"type": "float64", "shape": [1]}),
)


class RequestError(ValueError):
    """A writing request (bsread message, audit line or ``.err`` file) that cannot be used, with the reason."""


@dataclass(frozen=True)
class WriteRequest:
    """One writing request; the two inner fields stay the JSON strings they were sent as (§4, §5)."""

    data_api_request: str
    parameters: str
    timestamp: float

    @classmethod
    def from_record(cls, record: object) -> WriteRequest:
        """Build from the decoded JSON of an audit line or ``.err`` file; checks the fields and inner JSON."""
        if not isinstance(record, dict):
            raise RequestError(f"a writing request is a JSON object, got {type(record).__name__}")
        missing = [k for k in ("data_api_request", "parameters", "timestamp") if k not in record]
        if missing:
            raise RequestError(f"writing request lacks {missing}; it has {sorted(record)}")
        request = cls(record["data_api_request"], record["parameters"], record["timestamp"])
        request.check()
        return request

    def check(self) -> None:
        if not isinstance(self.data_api_request, str) or not isinstance(self.parameters, str):
            raise RequestError("data_api_request and parameters must be JSON strings")
        if isinstance(self.timestamp, bool) or not isinstance(self.timestamp, (int, float)):
            raise RequestError(f"timestamp must be a number, got {self.timestamp!r}")
        for name, text in (("data_api_request", self.data_api_request), ("parameters", self.parameters)):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise RequestError(f"{name} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise RequestError(f"{name} must hold a JSON object, got {type(value).__name__}")
        if not isinstance(self.params.get("output_file"), str) or not self.params["output_file"]:
            raise RequestError("parameters lack output_file")

    @property
    def query(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data_api_request)
        return value

    @property
    def params(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.parameters)
        return value

    @property
    def output_file(self) -> str:
        return str(self.params["output_file"])

    def record(self) -> dict[str, Any]:
        """The request as the audit line and ``.err`` file hold it (inner fields double-encoded)."""
        return {"data_api_request": self.data_api_request, "parameters": self.parameters,
                "timestamp": self.timestamp}

    def with_output_file(self, output_file: str) -> WriteRequest:
        params = self.params
        params["output_file"] = output_file
        return WriteRequest(self.data_api_request, json.dumps(params), self.timestamp)

    def describe(self) -> str:
        rng = self.query.get("range", {})
        return f"{self.output_file} pulses {rng.get('startPulseId')}..{rng.get('endPulseId')}"


class _Frames:
    """The receiver interface ``bsread``'s handler reads from, over an already received multipart."""

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = frames
        self._next = 0

    def next(self, as_json: bool = False) -> Any:
        frame = self._frames[self._next]
        self._next += 1
        return json.loads(frame) if as_json else frame

    def has_more(self) -> bool:
        return self._next < len(self._frames)


def decode_message(handler: Handler, frames: list[bytes]) -> WriteRequest:
    """Decode one bsread message (main header, data header, 3 × value + timestamp) into a request.

    ``handler`` is one ``bsread`` compact handler per socket: it caches the decoders by data-header hash.
    """
    try:
        message = handler.receive(_Frames(frames))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RequestError(f"not a bsread message ({len(frames)} frames): {exc!r}") from None
    if message is None:
        raise RequestError("empty bsread main header")
    values = {name: value.value for name, value in message.data.items()}
    missing = [name for name, _ in REQUEST_CHANNELS if values.get(name) is None]
    if missing:
        raise RequestError(f"bsread message lacks the request channels {missing}; it has {sorted(values)}")
    timestamp = values["timestamp"]
    request = WriteRequest(str(values["data_api_request"]), str(values["parameters"]),
                           float(timestamp[0] if hasattr(timestamp, "__len__") else timestamp))
    request.check()
    return request
