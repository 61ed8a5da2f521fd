"""A fake data API (databuffer.md §8) loaded with DBW-shaped samples, for the writer's tests and benchmark.

It answers ``POST /query`` from deterministic samples (values computed from the pulse id), so the writers are
tested without the local data buffer. Runs an ``http.server`` in a thread on a free loopback port.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["CAMERA", "FakeDataApi", "SampleChannel", "dbw_samples", "global_date"]

CAMERA = "SARES20-CAMS142-M5:FPICTURE"
_TZ = timezone(timedelta(hours=2))


def global_date(pulse_id: int) -> str:
    """ISO-8601 with nine fractional digits and the UTC offset, as the PSI data API writes ``globalDate``."""
    sec = 1528459491 + pulse_id // 100
    ns = (pulse_id % 100) * 10_000_000 + 143344
    return datetime.fromtimestamp(sec, _TZ).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}+02:00"


@dataclass
class SampleChannel:
    name: str
    type: str
    shape: list[int]
    has: Callable[[int], bool]
    value: Callable[[int], Any]
    # NOTE: pulses with the same key share one serialised value: long ranges of big images stay cheap to serve
    value_key: Callable[[int], Hashable] | None = None
    _cache: dict[int, str] = field(default_factory=dict, repr=False)
    _values: dict[Hashable, str] = field(default_factory=dict, repr=False)

    @property
    def backend(self) -> str:
        return "sf-imagebuffer" if self.name.endswith(":FPICTURE") else "sf-databuffer"

    def event_json(self, pid: int) -> str:
        # NOTE: events are serialised once and reused: big images cost tens of milliseconds each to dump.
        if pid not in self._cache:
            head = json.dumps({"pulseId": pid, "globalDate": global_date(pid), "shape": self.shape})
            self._cache[pid] = f'{head[:-1]}, "value": {self._value_json(pid)}}}'
        return self._cache[pid]

    def _value_json(self, pid: int) -> str:
        if self.value_key is None:
            return _dumps(self.value(pid))
        key = self.value_key(pid)
        if key not in self._values:
            self._values[key] = _dumps(self.value(pid))
        return self._values[key]

    def entry_json(self, start: int, end: int) -> str:
        events = ",".join(self.event_json(pid) for pid in range(start, end + 1) if self.has(pid))
        head = json.dumps({"name": self.name, "backend": self.backend})
        config = json.dumps([{"type": self.type, "shape": self.shape}])
        return f'{{"channel": {head}, "configs": {config}, "data": [{events}]}}'


def _dumps(value: object) -> str:
    return json.dumps(value.ravel().tolist() if isinstance(value, np.ndarray) else value)


def _image(pid: int, shape: list[int]) -> np.ndarray[Any, Any]:
    rows, cols = shape[1], shape[0]
    return ((np.arange(rows * cols, dtype=np.uint32) * 7 + pid) % 65536).astype(np.uint16).reshape(rows, cols)


def dbw_samples(first: int = 1000) -> list[SampleChannel]:
    """Scalars of four types, a [1024] waveform, a string, a bool, a [659, 494] camera with 3 events, and a
    channel with a config but no data; gaps differ per channel."""
    camera_pulses = {first, first + 7, first + 14}
    return [
        SampleChannel("SAR-CVME-TIFALL5:FLOAT32", "float32", [1], lambda p: True, lambda p: p * 0.5),
        SampleChannel("SAR-CVME-TIFALL5:FLOAT64", "float64", [1], lambda p: True, lambda p: p / 3),
        SampleChannel("SAR-CVME-TIFALL5:INT32", "int32", [1], lambda p: p % 2 == 0, lambda p: -p),
        SampleChannel("SAR-CVME-TIFALL5:UINT16", "uint16", [1], lambda p: True, lambda p: p % 65536),
        SampleChannel("SAR-CVME-TIFALL5:WAVE", "float64", [1024], lambda p: p % 4 != 1,
                      lambda p: (np.arange(1024) * 0.25 + p)),
        SampleChannel("SAR-CVME-TIFALL5:TEXT", "string", [1], lambda p: p % 3 == 0, lambda p: f"pulse {p} ü"),
        SampleChannel("SAR-CVME-TIFALL5:FLAG", "bool", [1], lambda p: True, lambda p: p % 2 == 0),
        SampleChannel(CAMERA, "uint16", [659, 494], lambda p: p in camera_pulses, lambda p: _image(p, [659, 494])),
        SampleChannel("SAR-CVME-TIFALL5:NODATA", "float64", [1], lambda p: False, lambda p: 0.0),
    ]


class FakeDataApi:
    """``POST /query`` over the samples; ``answer`` replaces the response with a fixed JSON value (e.g. a dict),
    ``fail_first`` answers the first N queries with HTTP 500 ``{"status": 500, ...}``. ``queries`` records
    (arrival time, body) of every query."""

    def __init__(self, samples: list[SampleChannel] | None = None) -> None:
        self.channels = {ch.name: ch for ch in (samples if samples is not None else dbw_samples())}
        self.answer: object = None
        self.fail_first = 0
        self.queries: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-data-api", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/query"

    def __enter__(self) -> FakeDataApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def respond(self, body: dict[str, Any]) -> tuple[int, str]:
        with self._lock:
            self.queries.append((time.time(), body))
            failing = len(self.queries) <= self.fail_first
        if failing:
            return 500, json.dumps({"status": 500, "error": "Internal Server Error", "message": "fake failure"})
        if self.answer is not None:
            return 200, json.dumps(self.answer)
        start, end = int(body["range"]["startPulseId"]), int(body["range"]["endPulseId"])
        entries = []
        for item in body.get("channels", []):
            name = item["name"] if isinstance(item, dict) else item
            sample = self.channels.get(name)
            if sample is None:
                entries.append(json.dumps({"channel": {"name": name, "backend": "sf-databuffer"},
                                           "configs": [], "data": []}))
            else:
                entries.append(sample.entry_json(start, end))
        return 200, "[" + ",".join(entries) + "]"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, text = api.respond(body)
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler
