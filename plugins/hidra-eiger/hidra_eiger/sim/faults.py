"""Fault injection of the simulated DCU: the test-control knobs (``simulator/config``) and which request fails."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from hidra_eiger.sim.params import Param

log = logging.getLogger(__name__)

__all__ = ["KNOB_HELP", "Faults", "simulator_knobs"]

_N = 2**31 - 1

# NOTE: one table for the parameters, the CLI epilog and the README, so that the three cannot drift apart
KNOB_HELP: dict[str, str] = {
    "file_content": "hdf5 (real master/data files, bslz4) or random (random bytes of random_file_bytes each)",
    "random_file_bytes": "size of every file written with file_content=random (default 1 MiB)",
    "grow_s": "every new file (also put_file's) grows to its final size over this many seconds (0 = at once)",
    "data_delay_s": "each /data response starts this many seconds late (a slow DCU)",
    "fail_every": "every Nth /data request (GET, HEAD or DELETE) answers HTTP 500 (0 = off)",
    "reset_every": "every Nth GET /data stops after some body bytes with a TCP reset (RST)",
    "truncate_every": "every Nth GET /data sends the full Content-Length, then closes cleanly after ~half the body",
    "no_content_length": "GET and HEAD /data answer without Content-Length (chunked transfer encoding)",
    "listing_fail_every": "every Nth listing request (files, files/, status/files) answers HTTP 500",
    "buffer_bytes": "the DCU's RAM in bytes (0 = unlimited); when an image does not fit, acquisition stalls "
                    "until files are deleted; detector/status/builder/dcu_buffer_free = 100 * free / total",
    "reboot_resets_series": "simulator/command/reboot also restarts the series id at 1",
}


def simulator_knobs() -> dict[str, Param]:
    return {
        "file_content": Param("hdf5", "string", allowed_values=["hdf5", "random"]),
        "random_file_bytes": Param(1 << 20, "uint", min=0, max=1 << 34, unit="B"),
        "grow_s": Param(0.0, "float", min=0.0, max=3600.0, unit="s"),
        "data_delay_s": Param(0.0, "float", min=0.0, max=3600.0, unit="s"),
        "fail_every": Param(0, "uint", max=_N), "reset_every": Param(0, "uint", max=_N),
        "truncate_every": Param(0, "uint", max=_N), "no_content_length": Param(False, "bool"),
        "listing_fail_every": Param(0, "uint", max=_N),
        "buffer_bytes": Param(0, "uint", max=1 << 40, unit="B"),
        "reboot_resets_series": Param(False, "bool"),
    }


def _every(n: int, count: int) -> bool:
    return n > 0 and count % n == 0


class Faults:
    """Counts requests (``simulator/status/requests``) and decides which one a fault hits, from the knobs."""

    def __init__(self, knobs: Callable[[], dict[str, Any]]) -> None:
        self._knobs = knobs
        self._lock = threading.Lock()
        self.counts = {"list": 0, "get": 0, "head": 0, "delete": 0, "faults": 0}
        self._data = 0

    def listing(self) -> bool:
        """Count a listing request; True when it must answer 500."""
        with self._lock:
            self.counts["list"] += 1
            return self._hit(_every(int(self._knobs()["listing_fail_every"]), self.counts["list"]))

    def data(self, method: str) -> str | None:
        """Count a /data request; the fault it gets: "fail", "reset", "truncate" or None."""
        knobs = self._knobs()
        with self._lock:
            self._data += 1
            kind = method.lower()
            if kind in self.counts:
                self.counts[kind] += 1
            if self._hit(_every(int(knobs["fail_every"]), self._data)):
                return "fail"
            if kind != "get":
                return None
            for fault in ("reset", "truncate"):
                if self._hit(_every(int(knobs[f"{fault}_every"]), self.counts["get"])):
                    return fault
        return None

    def _hit(self, yes: bool) -> bool:
        if yes:
            self.counts["faults"] += 1
        return yes

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
