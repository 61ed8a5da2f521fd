"""The broker's state machine (databuffer.md §3): pure data, no I/O, no clock.

State = (parameters P, start pulse A, last stop L); the status is ``receiving`` with P and A, ``configured`` with P
only, else ``stopped``. A stop either is ignored, is an error, or yields a :class:`Run` that the caller audits and
sends and then :meth:`BrokerState.commit`\\ s (so a failed send leaves the state as it was).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REQUIRED_PARAMETERS", "BrokerState", "Ignored", "ParameterError", "Run", "Statistics", "StopError"]

log = logging.getLogger(__name__)

REQUIRED_PARAMETERS = ("general/created", "general/user", "general/process", "general/instrument", "output_file")


class ParameterError(ValueError):
    """Posted parameters refused; the state is unchanged."""


class StopError(ValueError):
    """A stop that is an error reply; nothing is sent and the state is unchanged."""


@dataclass(frozen=True)
class Ignored:
    """A stop that is answered with an empty body and changes nothing."""

    reason: str


@dataclass(frozen=True)
class Run:
    """A stop that produces writing requests for [start, stop] with these parameters."""

    start: int
    stop: int
    parameters: dict[str, Any]


@dataclass
class Statistics:
    """``GET /statistics``: counted once per completed stop, not per request of a camera split."""

    process_startup_time: str
    n_processed_requests: int = 0
    last_sent_write_request: dict[str, Any] | None = None
    last_sent_write_request_time: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_processed_requests": self.n_processed_requests,
                               "process_startup_time": self.process_startup_time}
        if self.last_sent_write_request is not None:
            out["last_sent_write_request"] = self.last_sent_write_request
            out["last_sent_write_request_time"] = self.last_sent_write_request_time
        return out


def check_parameters(body: Any) -> dict[str, Any]:
    """The posted body if it is a JSON object with every required key, else :class:`ParameterError`."""
    if not isinstance(body, dict):
        raise ParameterError(f"parameters must be a JSON object, got {type(body).__name__}")
    missing = [key for key in REQUIRED_PARAMETERS if key not in body]
    if missing:
        raise ParameterError(f"Missing mandatory parameters {missing}: required {list(REQUIRED_PARAMETERS)}, "
                             f"received {list(body)}")
    if not isinstance(body["output_file"], str) or not body["output_file"]:
        raise ParameterError(f"output_file must be a non-empty string, got {body['output_file']!r}")
    return body


@dataclass
class BrokerState:
    parameters: dict[str, Any] | None = None
    start: int | None = None
    last_stop: int | None = None
    statistics: Statistics = field(default_factory=lambda: Statistics(""))

    @property
    def status(self) -> str:
        if self.parameters is None:
            return "stopped"
        return "receiving" if self.start is not None else "configured"

    def set_parameters(self, body: Any) -> dict[str, Any]:
        self.parameters = check_parameters(body)
        return self.parameters

    def start_pulse(self, pulse_id: int) -> None:
        if self.start is not None and self.start != pulse_id:
            log.warning("start pulse %d replaces %d: previous run will not be processed", pulse_id, self.start)
        self.start = pulse_id

    def stop_pulse(self, pulse_id: int) -> Ignored | Run:
        """What a stop at ``pulse_id`` does; raises :class:`StopError` for the error replies (F2, F3)."""
        if self.start is None:
            if pulse_id == self.last_stop:
                return Ignored(f"duplicate stop {pulse_id}")
            log.warning("stop pulse %d without a start pulse: ignored", pulse_id)
            return Ignored(f"stop {pulse_id} before start")
        if self.parameters is None:
            raise StopError("not configured: POST /parameters before the stop pulse")
        if pulse_id < self.start:
            raise StopError(f"stop_pulse_id < start_pulse_id ({pulse_id} < {self.start}): nothing sent")
        return Run(self.start, pulse_id, self.parameters)

    def commit(self, run: Run, last_request: dict[str, Any], when: str) -> None:
        """The run's requests are audited and sent: clear P and A, remember the stop, count it."""
        self.parameters = None
        self.start = None
        self.last_stop = run.stop
        self.statistics.n_processed_requests += 1
        self.statistics.last_sent_write_request = last_request
        self.statistics.last_sent_write_request_time = when

    def clear(self) -> None:
        self.parameters = None
        self.start = None
