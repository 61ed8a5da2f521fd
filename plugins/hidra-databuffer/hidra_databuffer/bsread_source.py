"""The ``bsread`` event source: one PULL (or SUB) connection to a bsread stream, one ``pulse`` event per message.

A pulse event carries the message's value frames as received (compressed form kept) in one payload, and their
description in its metadata (the contract in ``bsread_decode``; ``values.decode_pulse`` reads it back). Broken
messages are counted in ``stats`` and skipped, pulse-id gaps counted; each kind of problem is logged the first
time in full and then summed up at most once a minute, so a bad stream at 100 Hz does not flood the log.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Literal

import zmq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hidra_core import PULSE, EventSource, FileEvent, connect_stream, payload_size, receive_batch

from hidra_databuffer.bsread_decode import Decoder, DecodeError, Pulse

log = logging.getLogger(__name__)

__all__ = ["STATS", "BsreadConfig", "BsreadSource", "ProblemLog"]

#: counters of ``BsreadSource.stats``: messages received, pulses emitted, messages refused (malformed) or with no
#: channel (empty), pulse-id jumps (gaps) and the pulses they skipped (missing), values dropped from their pulse
#: (bad_values), pulse ids not above the previous one (rewinds: a restarted sender, a second stream)
STATS = ("received", "pulses", "malformed", "empty", "gaps", "missing", "bad_values", "rewinds")


class BsreadConfig(BaseModel):
    """Options of the ``bsread`` source (``source: {type: bsread, bsread: {...}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(description=(
        "the bsread stream to connect to, e.g. tcp://host:9999 (the sender binds, this source connects)"))
    mode: Literal["pull", "sub"] = Field("pull", description=(
        "pull: the sender PUSHes and deals messages round-robin over its clients (the bsread default); sub: the "
        "sender PUBlishes to every client and drops messages for clients that lag"))
    rcvhwm: int = Field(50, gt=0, description=(
        "receive high-water mark in messages (0.5 s at 100 Hz); kept small because these bytes are outside "
        "sender.hold.max_bytes: further messages wait in the bsread sender's queue (pull) or are dropped (sub)"))
    receive_batch: int = Field(256, gt=0, description="at most this many messages per poll")
    receive_batch_bytes: int = Field(64 << 20, gt=0, description=(
        "at most about this many bytes per poll (a poll stops after the message that crosses it)"))

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or not scheme or not rest:
            raise ValueError(f"must be a ZeroMQ address such as tcp://host:9999, got {value!r}")
        return value


class ProblemLog:
    """Counts problems by kind; logs the first of a kind in full, then at most one line per ``interval_s``
    with how many more there were and the latest one."""

    def __init__(self, where: str, interval_s: float = 60.0) -> None:
        self.where = where
        self.interval_s = interval_s
        self._unsaid: Counter[str] = Counter()
        self._said_at: dict[str, float] = {}

    def report(self, kind: str, text: str, *args: Any) -> None:
        now = time.monotonic()
        said_at = self._said_at.get(kind)
        if said_at is None:
            self._said_at[kind] = now
            log.warning("%s: %s (further %s problems are summed up every %g s): " + text,
                        self.where, kind, kind, self.interval_s, *args)
            return
        self._unsaid[kind] += 1
        if now - said_at >= self.interval_s:
            self._said_at[kind] = now
            log.warning("%s: %d %s problems in the last %.0f s; the latest: " + text,
                        self.where, self._unsaid.pop(kind), kind, now - said_at, *args)

    def flush(self) -> None:
        """Log what was counted but not said yet (at close)."""
        for kind, n in sorted(self._unsaid.items()):
            log.warning("%s: %d more %s problems before the source closed", self.where, n, kind)
        self._unsaid.clear()


class BsreadSource(EventSource):
    config_class = BsreadConfig
    default_fetcher = "inline"
    config: BsreadConfig

    def __init__(self, config: BsreadConfig) -> None:
        super().__init__(config)
        self._sock: zmq.Socket | None = None
        self._decoder = Decoder()
        self._problems = ProblemLog(config.address)
        self._last_pulse: int | None = None
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    @property
    def root(self) -> str:
        return self.config.address

    def open(self, context: zmq.Context) -> None:
        try:
            self._sock = connect_stream(context, self.config.address, self.config.rcvhwm,
                                        subscribe=self.config.mode == "sub")
        except ValueError as exc:
            raise ValueError(f"bsread: {exc}") from None
        log.info("bsread: connected to %s (%s)", self.config.address, self.config.mode)

    def close(self) -> None:
        self._problems.flush()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            log.info("bsread: %s closed; %s", self.config.address,
                     ", ".join(f"{k} {v}" for k, v in self.stats.items()))

    def poll(self, timeout_ms: int) -> list[FileEvent]:
        assert self._sock is not None, "open() first"
        events = (self._handle(frames) for frames in receive_batch(
            self._sock, timeout_ms, self.config.receive_batch, self.config.receive_batch_bytes))
        return [event for event in events if event is not None]

    def _handle(self, frames: list[memoryview]) -> FileEvent | None:
        self.stats["received"] += 1
        try:
            pulse = self._decoder.decode(frames)
        except DecodeError as err:
            self.stats["malformed"] += 1
            self._problems.report(err.kind, "message refused: %s", err)
            return None
        if pulse is None:
            self.stats["empty"] += 1
            self._problems.report("empty", "a message whose data header lists no channel (ignored)")
            return None
        for name, why in pulse.bad:
            self.stats["bad_values"] += 1
            self._problems.report("bad_value", "pulse %d: value of %r dropped: %s", pulse.header.pulse_id, name, why)
        self._track(pulse.header.pulse_id)
        self.stats["pulses"] += 1
        return self._event(pulse)

    def _track(self, pulse_id: int) -> None:
        last, self._last_pulse = self._last_pulse, pulse_id
        if last is None or pulse_id == last + 1:
            return
        if pulse_id > last:
            self.stats["gaps"] += 1
            self.stats["missing"] += pulse_id - last - 1
            self._problems.report("gap", "pulse id jumped from %d to %d: %d pulse(s) missing", last, pulse_id,
                                  pulse_id - last - 1)
        else:
            self.stats["rewinds"] += 1
            self._problems.report("rewind", "pulse id went from %d back to %d (a restarted sender?)", last,
                                  pulse_id)

    def _event(self, pulse: Pulse) -> FileEvent:
        head = pulse.header
        return FileEvent(self.config.address, "", f"pulse_{head.pulse_id}", kind=PULSE, series="",
                         version=f"{head.pulse_id}:{head.sec}.{head.ns}", metadata=pulse.metadata,
                         payload=pulse.payload, size=payload_size(pulse.payload))
